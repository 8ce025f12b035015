"""Cloud Map administration for the integration tests, run with an interpreter that has boto3
(the tests' own interpreter has none): a long-running process that reads one JSON command per
line on stdin and writes one JSON reply per line on stdout, so that boto3 is imported once.

It talks to a moto server (the endpoint given with --endpoint) through real, signed boto3
calls: the control plane (namespaces, services, RegisterInstance, DeregisterInstance), the data
plane (DiscoverInstances, for checks), IAM and STS (users, roles, assumed-role credentials for
the signature-verification tests).

Commands ({"op": ..., ...} -> {"ok": true, "result": ...} or {"ok": false, "error": "Code: msg"}):
  namespace name                      create an HTTP namespace (idempotent); result: its id
  service namespace name              create a service in it (idempotent); result: its id
  register service id attributes      RegisterInstance (attributes: {key: value})
  deregister service id               DeregisterInstance
  delete_service service [deregister_first]
                                      DeleteService; first deregister every instance (AWS refuses
                                      to delete a service that has some; moto does not), unless
                                      deregister_first is false
  discover namespace service [query] [health]
                                      DiscoverInstances (no "data-" host prefix); result: the reply
  revision namespace service          DiscoverInstancesRevision; result: the revision
  auth_setup roles users              (before verification is on) an admin IAM user with "*" whose
                                      key this process then signs with, and one IAM role per name
                                      in `roles` and one IAM user with an access key per name in
                                      `users`, each with a servicediscovery:DiscoverInstances*
                                      policy; result: {"admin": key, "users": {name: key}}, a key
                                      being {AccessKeyId, SecretAccessKey}
  assume role                         sts:AssumeRole; result: {AccessKeyId, SecretAccessKey,
                                      SessionToken} (moto checks the token on every request)
  revoke role                         delete the role's policy: its credentials are refused (403)
  reset                               forget everything (after POST /moto-api/reset)
  replay                              re-create every namespace, service and instance this
                                      process made (after moto restarted and forgot them)
"""
import argparse
import json
import sys

import boto3
from botocore.config import Config

POLICY_SD = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["servicediscovery:DiscoverInstances",
                                   "servicediscovery:DiscoverInstancesRevision"],
     "Resource": "*"}]}
POLICY_ALL = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"}]}
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}


class Admin:
    def __init__(self, endpoint, region):
        self.endpoint, self.region = endpoint, region
        self.key = ("testing", "testing")
        self.namespaces = {}  # name -> id
        self.services = {}  # name -> (namespace name, id)
        self.instances = {}  # service name -> {instance id: attributes}, in registration order
        self._clients()

    def _clients(self):
        cfg = Config(inject_host_prefix=False, retries={"max_attempts": 1, "mode": "standard"},
                     connect_timeout=3, read_timeout=10)
        kw = dict(endpoint_url=self.endpoint, region_name=self.region, config=cfg,
                  aws_access_key_id=self.key[0], aws_secret_access_key=self.key[1])
        self.sd = boto3.client("servicediscovery", **kw)
        self.iam = boto3.client("iam", **kw)
        self.sts = boto3.client("sts", **kw)

    def op_namespace(self, name):
        if name not in self.namespaces:
            for ns in self.sd.list_namespaces()["Namespaces"]:
                if ns["Name"] == name:
                    self.namespaces[name] = ns["Id"]
                    break
            else:
                self.sd.create_http_namespace(Name=name)
                for ns in self.sd.list_namespaces()["Namespaces"]:
                    if ns["Name"] == name:
                        self.namespaces[name] = ns["Id"]
        return self.namespaces[name]

    def op_service(self, namespace, name):
        if name not in self.services:
            ns_id = self.op_namespace(namespace)
            sid = self.sd.create_service(Name=name, NamespaceId=ns_id)["Service"]["Id"]
            self.services[name] = (namespace, sid)
            self.instances.setdefault(name, {})
        return self.services[name][1]

    def op_register(self, service, id, attributes):
        self.sd.register_instance(ServiceId=self.services[service][1], InstanceId=id,
                                  Attributes=attributes)
        self.instances[service][id] = attributes

    def op_deregister(self, service, id):
        self.sd.deregister_instance(ServiceId=self.services[service][1], InstanceId=id)
        self.instances[service].pop(id, None)

    def op_delete_service(self, service, deregister_first=True):
        for iid in list(self.instances.get(service, {})) if deregister_first else ():
            self.op_deregister(service, iid)
        self.sd.delete_service(Id=self.services[service][1])
        del self.services[service]
        del self.instances[service]

    def op_discover(self, namespace, service, query=None, health=None):
        kw = dict(NamespaceName=namespace, ServiceName=service, MaxResults=1000)
        if query:
            kw["QueryParameters"] = query
        if health:
            kw["HealthStatus"] = health
        out = self.sd.discover_instances(**kw)
        out.pop("ResponseMetadata", None)
        return out

    def op_revision(self, namespace, service):
        return self.sd.discover_instances_revision(
            NamespaceName=namespace, ServiceName=service)["InstancesRevision"]

    def op_auth_setup(self, roles=(), users=()):
        self.iam.create_user(UserName="admin")
        self.iam.put_user_policy(UserName="admin", PolicyName="all",
                                 PolicyDocument=json.dumps(POLICY_ALL))
        k = self.iam.create_access_key(UserName="admin")["AccessKey"]
        for role in roles:
            self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST))
            self.iam.put_role_policy(RoleName=role, PolicyName="discover",
                                     PolicyDocument=json.dumps(POLICY_SD))
        keys = {}
        for user in users:
            self.iam.create_user(UserName=user)
            self.iam.put_user_policy(UserName=user, PolicyName="discover",
                                     PolicyDocument=json.dumps(POLICY_SD))
            uk = self.iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {"AccessKeyId": uk["AccessKeyId"], "SecretAccessKey": uk["SecretAccessKey"]}
        self.key = (k["AccessKeyId"], k["SecretAccessKey"])
        self._clients()
        return {"admin": {"AccessKeyId": k["AccessKeyId"], "SecretAccessKey": k["SecretAccessKey"]},
                "users": keys}

    def op_assume(self, role):
        arn = self.iam.get_role(RoleName=role)["Role"]["Arn"]
        c = self.sts.assume_role(RoleArn=arn, RoleSessionName="remora")["Credentials"]
        return {"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                "SessionToken": c["SessionToken"]}

    def op_revoke(self, role):
        self.iam.delete_role_policy(RoleName=role, PolicyName="discover")

    def op_reset(self):
        self.key = ("testing", "testing")
        self.namespaces, self.services, self.instances = {}, {}, {}
        self._clients()

    def op_replay(self):
        services, instances = dict(self.services), {s: dict(i) for s, i in self.instances.items()}
        self.namespaces, self.services, self.instances = {}, {}, {}
        for name, (namespace, _) in services.items():
            self.op_service(namespace, name)
            for iid, attrs in instances[name].items():
                self.op_register(name, iid, attrs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", default="us-east-1")
    args = ap.parse_args()
    admin = Admin(args.endpoint, args.region)
    print(json.dumps({"ok": True, "result": "ready"}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            result = getattr(admin, "op_" + op)(**cmd)
            reply = {"ok": True, "result": result}
        except Exception as e:  # reported to the test, which decides
            code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
            reply = {"ok": False, "error": f"{code}: {e}"}
        print(json.dumps(reply, default=str), flush=True)


if __name__ == "__main__":
    main()
