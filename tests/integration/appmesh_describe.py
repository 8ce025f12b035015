"""What `aws appmesh describe-*` prints for a mesh, from moto's App Mesh (run with MOTO_PYTHON,
the interpreter that has moto and boto3; moto runs in process, no server).

stdin: {"mesh": NAME, "virtualNodes": {NAME: SPEC}, "virtualRouters": {NAME: SPEC},
        "routes": [[ROUTER, NAME, SPEC]], "virtualServices": {NAME: SPEC}}
stdout: a remora config document whose lists hold each describe-* output whole, as a user
pastes it ({"virtualNode": {...}}, with metadata and status), and "mesh" describe-mesh's member.
moto has no virtual gateways, so neither has this, nor virtual services, which are written here
in botocore's shape."""
import json
import sys

import boto3
from moto import mock_aws


def described(reply):
    reply.pop("ResponseMetadata")
    return reply


def main():
    want = json.load(sys.stdin)
    mesh = want["mesh"]
    with mock_aws():
        c = boto3.client("appmesh", region_name="us-east-1")
        # The spec given: moto answers an empty egressFilter where App Mesh fills in DROP_ALL.
        c.create_mesh(meshName=mesh, spec={"egressFilter": {"type": "DROP_ALL"}})
        doc = {"mesh": described(c.describe_mesh(meshName=mesh))["mesh"],
               "virtualNodes": [], "virtualRouters": [], "routes": [], "virtualServices": []}
        for name, spec in want["virtualNodes"].items():
            c.create_virtual_node(meshName=mesh, virtualNodeName=name, spec=spec)
            doc["virtualNodes"].append(
                described(c.describe_virtual_node(meshName=mesh, virtualNodeName=name)))
        for name, spec in want["virtualRouters"].items():
            c.create_virtual_router(meshName=mesh, virtualRouterName=name, spec=spec)
            doc["virtualRouters"].append(
                described(c.describe_virtual_router(meshName=mesh, virtualRouterName=name)))
        for router, name, spec in want["routes"]:
            c.create_route(meshName=mesh, virtualRouterName=router, routeName=name, spec=spec)
            doc["routes"].append(described(c.describe_route(
                meshName=mesh, virtualRouterName=router, routeName=name)))
        # moto has no virtual services ("Not yet implemented"): theirs are written here in the
        # shape of botocore's DescribeVirtualServiceOutput, metadata as moto gives a router's.
        meta = doc["virtualRouters"][0]["virtualRouter"]["metadata"] if doc["virtualRouters"] else {}
        for name, spec in want["virtualServices"].items():
            doc["virtualServices"].append({"virtualService": {
                "meshName": mesh, "virtualServiceName": name, "spec": spec,
                "metadata": dict(meta, arn=f"arn:aws:appmesh:us-east-1:123456789012:mesh/{mesh}"
                                           f"/virtualService/{name}"),
                "status": {"status": "ACTIVE"}}})
    json.dump(doc, sys.stdout, default=str)  # timestamps as the CLI prints them: text


if __name__ == "__main__":
    main()
