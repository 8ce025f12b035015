"""Test certificates made with the openssl CLI: two unrelated CAs and the leaves the TLS tests
need (server certificates with DNS and URI SANs, SPIFFE client certificates, an expired one,
a wrong-SAN one, a wildcard one). Keys are EC P-256: bookworm's OpenSSL runs at security
level 2, which refuses RSA below 2048 bits.

Leaves are signed with `openssl ca`, because `openssl x509 -req` in OpenSSL 3.0 cannot set a
notBefore in the past, and the expired certificate needs one."""
import datetime
import os
import secrets
import subprocess
import types

TIME_FMT = "%Y%m%d%H%M%SZ"  # what `openssl ca -startdate/-enddate` take (GeneralizedTime)


def openssl(*args, stdin=None):
    out = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=30)
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace")
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{err}")
    return out.stdout


def utc(dt):
    return dt.astimezone(datetime.timezone.utc).strftime(TIME_FMT)


class Cert:
    """A certificate and its key, as PEM files. `serial` is the integer serial number;
    `not_before`/`not_after` are aware UTC datetimes; `sans` are ("DNS"|"URI", value) pairs in
    the certificate's order."""

    def __init__(self, cert, key, sans=()):
        self.cert, self.key, self.sans = cert, key, list(sans)
        info = describe(cert)
        self.serial, self.not_before, self.not_after = info.serial, info.not_before, info.not_after

    def pem(self):
        with open(self.cert, "rb") as f:
            return f.read()

    def key_pem(self):
        with open(self.key, "rb") as f:
            return f.read()


def describe(path):
    """serial (int), not_before, not_after (aware UTC datetimes) of a PEM certificate file."""
    text = openssl("x509", "-in", path, "-noout", "-serial", "-startdate", "-enddate",
                   "-dateopt", "iso_8601").decode()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    when = lambda s: datetime.datetime.strptime(s.strip(), "%Y-%m-%d %H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    return types.SimpleNamespace(serial=int(fields["serial"], 16),
                                 not_before=when(fields["notBefore"]),
                                 not_after=when(fields["notAfter"]))


def new_key(path):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


class CA:
    """A self-signed root with an `openssl ca` database in `dir`, so that each leaf gets the
    next serial (the first one random, so two CAs and two runs never share serials)."""

    def __init__(self, dir, name):
        self.dir, self.name = dir, name
        os.makedirs(os.path.join(dir, "newcerts"), exist_ok=True)
        open(os.path.join(dir, "index.txt"), "w").close()
        with open(os.path.join(dir, "serial"), "w") as f:
            # 16 hex digits (openssl wants whole bytes), top bit clear: positive, no leading zeros
            f.write("%016x\n" % (secrets.randbits(59) | 1 << 60))
        self.key = new_key(os.path.join(dir, "ca.key"))
        self.cert = os.path.join(dir, "ca.pem")
        self.conf = os.path.join(dir, "ca.cnf")
        with open(self.conf, "w") as f:
            f.write(f"""[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = {name}
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
commonName = supplied
""")
        openssl("req", "-config", self.conf, "-x509", "-new", "-key", self.key, "-extensions",
                "v3_ca", "-days", "3650", "-out", self.cert)
        info = describe(self.cert)
        self.serial, self.not_before, self.not_after = info.serial, info.not_before, info.not_after

    def issue(self, out_dir, name, sans, not_before=None, not_after=None, days=30):
        """A leaf for `sans` (("DNS"|"URI", value) pairs), usable as server and client.
        Validity: not_before..not_after (datetimes) when given, else now-1h .. now+days."""
        os.makedirs(out_dir, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        not_before = not_before or now - datetime.timedelta(hours=1)
        not_after = not_after or now + datetime.timedelta(days=days)
        key = new_key(os.path.join(out_dir, f"{name}.key"))
        csr = os.path.join(out_dir, f"{name}.csr")
        cert = os.path.join(out_dir, f"{name}.pem")
        ext = os.path.join(out_dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("[ leaf ]\n"
                    "basicConstraints = critical,CA:FALSE\n"
                    "keyUsage = critical,digitalSignature\n"
                    "extendedKeyUsage = serverAuth,clientAuth\n"
                    "subjectKeyIdentifier = hash\n"
                    "authorityKeyIdentifier = keyid,issuer\n"
                    f"subjectAltName = {','.join(f'{t}:{v}' for t, v in sans)}\n")
        cn = sans[0][1] if sans[0][0] == "DNS" else name
        openssl("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", csr)
        openssl("ca", "-batch", "-config", self.conf, "-notext", "-in", csr, "-out", cert,
                "-extfile", ext, "-extensions", "leaf",
                "-startdate", utc(not_before), "-enddate", utc(not_after))
        return Cert(cert, key, sans)


B_SANS = [("DNS", "b.apps.local"), ("URI", "spiffe://mesh.local/b")]
A_SANS = [("URI", "spiffe://mesh.local/a")]


def make_pki(dir):
    """Everything the TLS tests use, in `dir`:
    ca, ca2          two unrelated roots
    b                server b: DNS:b.apps.local, URI:spiffe://mesh.local/b (ca)
    b_other_ca       the same names, signed by ca2
    b_expired        the same names, valid 2020-01-01 .. 2020-01-02 (ca)
    c                wrong SANs for b: DNS:c.apps.local, URI:spiffe://mesh.local/c (ca)
    wildcard         DNS:*.apps.local only (ca)
    a                client a: URI:spiffe://mesh.local/a (ca)
    a_other_ca       the same name, signed by ca2
    x                client with URI:spiffe://mesh.local/x (ca): trusted, SAN not listed
    certs_view       b's names, valid now-1d .. now+30d+6h, for /certs (whole days left: 30)
    """
    ca = CA(os.path.join(dir, "ca"), "remora test CA")
    ca2 = CA(os.path.join(dir, "ca2"), "unrelated CA")
    leaves = os.path.join(dir, "leaves")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    d = datetime.datetime
    utc0 = datetime.timezone.utc
    return types.SimpleNamespace(
        dir=dir, ca=ca, ca2=ca2,
        b=ca.issue(leaves, "b", B_SANS),
        b_other_ca=ca2.issue(leaves, "b-other-ca", B_SANS),
        b_expired=ca.issue(leaves, "b-expired", B_SANS, not_before=d(2020, 1, 1, tzinfo=utc0),
                           not_after=d(2020, 1, 2, tzinfo=utc0)),
        c=ca.issue(leaves, "c", [("DNS", "c.apps.local"), ("URI", "spiffe://mesh.local/c")]),
        wildcard=ca.issue(leaves, "wildcard", [("DNS", "*.apps.local")]),
        a=ca.issue(leaves, "a", A_SANS),
        a_other_ca=ca2.issue(leaves, "a-other-ca", A_SANS),
        x=ca.issue(leaves, "x", [("URI", "spiffe://mesh.local/x")]),
        certs_view=ca.issue(leaves, "certs-view", B_SANS,
                            not_before=now - datetime.timedelta(days=1),
                            not_after=now + datetime.timedelta(days=30, hours=6)),
    )
