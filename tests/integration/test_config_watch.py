"""The config file's watch (docs/config.md, Reload): a change is loaded once it is whole,
whichever way it is made (a write in place, a rename over the file, a ConfigMap's symlink
swap), a half-written file is never loaded, and nothing polls while the file stands still."""
import copy
import json
import os
import subprocess
import time

from conftest import mesh_config, wait_until

STAT_OK, STAT_FAILED = "remora.config.reload_ok", "remora.config.reload_failed"


def marked(base, n):
    """base with one more virtual service, named for n, that this node (web) calls: which
    config is in force shows in /config_dump."""
    cfg = copy.deepcopy(base)
    name = f"marker-{n}.local"
    cfg["virtualServices"].append({"virtualServiceName": name, "spec": {
        "provider": {"virtualNode": {"virtualNodeName": "cart-v1"}}}})
    web = next(v for v in cfg["virtualNodes"] if v["virtualNodeName"] == "web")
    web["spec"]["backends"].append({"virtualService": {"virtualServiceName": name}})
    return cfg


def marker(r):
    status, dump = r.admin("/config_dump")
    assert status == 200
    names = [v["virtualServiceName"] for v in json.loads(dump)["config"]["virtualServices"]]
    found = [int(n[len("marker-"):-len(".local")]) for n in names if n.startswith("marker-")]
    return found[0] if found else None


def counts(r):
    st = r.stats()
    return st[STAT_OK], st[STAT_FAILED]


def started(upstream, remora):
    app, backend = upstream("app"), upstream("cart-v1")
    base = mesh_config(app.port, backend.port)
    r = remora(marked(base, 0))
    assert marker(r) == 0
    return r, base


def write_in_halves(r, base, meanwhile=lambda: None):
    """Writes a new config in place in two halves: the first flushed and left for a second,
    with `meanwhile` done then, in which nothing may be loaded; the close must load it whole."""
    ok, failed = counts(r)
    text = json.dumps(marked(base, 1)).encode()
    with open(r.config_path, "wb") as f:
        f.write(text[:len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
        meanwhile()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # watching for a reload that must not come
            assert counts(r) == (ok, failed), "a half-written config was loaded"
            time.sleep(0.05)
        f.write(text[len(text) // 2:])
    wait_until(lambda: counts(r) == (ok + 1, failed), timeout=3, what="the closed file loaded")
    assert marker(r) == 1


def test_a_write_in_place_is_loaded_when_the_writer_closes_the_file(upstream, remora):
    """The old watch polled the stat every 250 ms and loaded whatever it found, a file still
    being written included (a failed reload, counted and logged). Now a write in place is
    looked at when its writer closes the file: here the first half stays on disk, flushed, for
    a second (four of the old polls) and nothing is loaded; the close loads the whole file."""
    r, base = started(upstream, remora)
    write_in_halves(r, base)


def test_other_files_changing_beside_a_half_written_one_do_not_load_it(upstream, remora):
    """A file written and closed beside the config, and one renamed in beside it, make the watch
    look at the config too: while its own writer has not closed it, what it finds is not
    loaded (it was: a failed reload). The close loads the whole file, once."""
    r, base = started(upstream, remora)
    d = os.path.dirname(r.config_path)

    def beside():
        with open(os.path.join(d, "beside.txt"), "w") as other:
            other.write("x")
        with open(os.path.join(d, "beside.tmp"), "w") as other:
            other.write("y")
        os.rename(os.path.join(d, "beside.tmp"), os.path.join(d, "beside2.txt"))
    write_in_halves(r, base, beside)


def test_a_directory_replaced_is_watched_again(upstream, remora, tmp_path):
    """The config's directory moved away and a new one made in its place (a volume mounted
    again, a deploy swapping directories): the backstop poll finds the new file, watches the
    new directory, and from then a write in place is loaded at its close again, not two polls
    (10 s) later."""
    app, backend = upstream("app"), upstream("cart-v1")
    base = mesh_config(app.port, backend.port)
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "mesh.json"
    path.write_text(json.dumps(marked(base, 0)))
    r = remora(marked(base, 0), args=("--config", str(path)))
    assert marker(r) == 0
    os.rename(conf, tmp_path / "conf.old")
    conf.mkdir()
    path.write_text(json.dumps(marked(base, 1)))
    wait_until(lambda: marker(r) == 1, timeout=12, what="the new directory's file loaded")
    wait_until(lambda: f"files: watching {conf} again" in r.read_log(), timeout=12,
               what="the new directory watched")
    path.write_text(json.dumps(marked(base, 2)))
    wait_until(lambda: marker(r) == 2, timeout=3, what="a write in place loaded at its close")
    assert f"files: {conf} was removed or moved" in r.read_log()


def test_a_rename_over_the_file_is_loaded_once(upstream, remora):
    r, base = started(upstream, remora)
    ok, failed = counts(r)
    for n in (1, 2, 3):
        tmp = r.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(marked(base, n), f)
        os.rename(tmp, r.config_path)
        wait_until(lambda: marker(r) == n, timeout=3, what=f"config {n} in force")
        assert counts(r) == (ok + n, failed)


def test_a_configmap_symlink_swap_is_loaded(upstream, remora):
    """How the kubelet updates a mounted ConfigMap: the file is a link through `..data`, a link
    to a timestamped directory; an update writes a new directory, makes `..data_tmp` point at
    it and renames that over `..data`. Neither the file's name nor its directory's entry for it
    changes."""
    r, base = started(upstream, remora)
    d = os.path.dirname(r.config_path)
    name = os.path.basename(r.config_path)

    def version(n):
        os.mkdir(os.path.join(d, f"..v{n}"))
        with open(os.path.join(d, f"..v{n}", name), "w") as f:
            json.dump(marked(base, n), f)
        os.symlink(f"..v{n}", os.path.join(d, "..data_tmp"))
        os.rename(os.path.join(d, "..data_tmp"), os.path.join(d, "..data"))

    ok, failed = counts(r)
    version(1)
    os.symlink(os.path.join("..data", name), r.config_path + ".link")
    os.rename(r.config_path + ".link", r.config_path)  # the file becomes the link
    wait_until(lambda: marker(r) == 1, timeout=3, what="the linked config in force")
    for n in (2, 3):
        version(n)
        wait_until(lambda: marker(r) == n, timeout=3, what=f"config {n} in force")
    assert counts(r) == (ok + 3, failed)


def test_ln_sf_onto_a_new_file_is_loaded(upstream, remora, tmp_path):
    """`ln -sf` removes the file and makes the link in its place: the link is whole at once."""
    r, base = started(upstream, remora)
    other = str(tmp_path / "other.json")
    with open(other, "w") as f:
        json.dump(marked(base, 7), f)
    subprocess.run(["ln", "-sf", other, r.config_path], check=True)
    wait_until(lambda: marker(r) == 7, timeout=3, what="the linked config in force")


def test_the_main_thread_makes_no_system_call_while_the_file_stands_still(upstream, remora):
    """The old watch woke the main thread 4 times a second (a stat in libuv's thread pool and
    its answer). strace counts the main thread's system calls over 2 s of an idle sidecar:
    none, the backstop poll (every 5 s) aside, which may fall inside the window once."""
    r, _ = started(upstream, remora)
    out = subprocess.run(["timeout", "-s", "INT", "2", "strace", "-c", "-p", str(r.proc.pid)],
                         capture_output=True, text=True, timeout=30).stderr
    calls = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls += int(parts[3])
    assert calls <= 4, out
