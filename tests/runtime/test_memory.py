"""Memory readers of the torch-free runtime: /proc/meminfo and cgroup v1/v2 limits."""
import os
import subprocess
import sys

from jetcap.runtime.memory import (
    MemoryInfo, cgroup_available, format_bytes, parse_limit, parse_meminfo, parse_memory_stat, parse_proc_cgroup,
    read_memory_info,
)

MEMINFO = """MemTotal:        4059712 kB
MemFree:          312448 kB
MemAvailable:    2270424 kB
Buffers:           81244 kB
HugePages_Total:       0
"""

CGROUP_V1 = """12:pids:/user.slice
11:memory:/docker/abc123
10:cpu,cpuacct:/docker/abc123
0::/docker/abc123
"""

CGROUP_V2 = "0::/system.slice/jetcap.service\n"

STAT_V1 = "cache 1000\nrss 2000\ntotal_inactive_file 300\nhierarchical_memory_limit 9223372036854771712\n"
STAT_V2 = "anon 5000\nfile 4000\ninactive_file 1000\nactive_file 3000\n"


def test_parse_meminfo():
    info = parse_meminfo(MEMINFO)
    assert info["MemAvailable"] == 2270424 * 1024
    assert info["MemTotal"] == 4059712 * 1024
    assert info["HugePages_Total"] == 0  # no unit: left as is
    assert parse_meminfo("") == {}


def test_parse_proc_cgroup():
    assert parse_proc_cgroup(CGROUP_V1) == ("/docker/abc123", "/docker/abc123")
    assert parse_proc_cgroup(CGROUP_V2) == (None, "/system.slice/jetcap.service")
    assert parse_proc_cgroup("4:memory:/\n") == ("/", None)
    assert parse_proc_cgroup("garbage\n") == (None, None)


def test_parse_limit():
    assert parse_limit("max\n") is None
    assert parse_limit("9223372036854771712\n") is None  # cgroup v1 "unlimited"
    assert parse_limit("2147483648\n") == 2 ** 31
    assert parse_limit("") is None


def test_parse_memory_stat_and_working_set():
    stat = parse_memory_stat(STAT_V2)
    assert stat["inactive_file"] == 1000
    assert cgroup_available(10000, 9000, stat) == 10000 - (9000 - 1000)
    assert cgroup_available(10000, 12000, {}) == 0
    assert cgroup_available(None, 5, stat) is None
    assert cgroup_available(10000, None, stat) == 10000
    assert parse_memory_stat(STAT_V1)["total_inactive_file"] == 300


def test_memory_info_available_is_the_smaller():
    info = MemoryInfo(mem_available=4 * 2 ** 30, cgroup_version=2, cgroup_limit=2 * 2 ** 30, cgroup_available=2 ** 30)
    assert info.available == 2 ** 30
    assert info.describe() == "MemAvailable 4.0 GiB; cgroup v2 limit 2.0 GiB (1.0 GiB free)"
    assert MemoryInfo().available is None and MemoryInfo().describe() == "memory information unavailable"


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2 ** 20) == "3.0 MiB"
    assert format_bytes(5 * 2 ** 40) == "5120.0 GiB"
    assert format_bytes(None) == "unknown"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_read_cgroup_v2_tree(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "meminfo", MEMINFO)
    write(proc / "self" / "cgroup", CGROUP_V2)
    service = cgroup / "system.slice" / "jetcap.service"
    write(service / "memory.max", "1073741824\n")
    write(service / "memory.current", "536870912\n")
    write(service / "memory.stat", "inactive_file 268435456\n")
    write(cgroup / "system.slice" / "memory.max", "max\n")
    info = read_memory_info(str(proc), str(cgroup))
    assert info.cgroup_version == 2 and info.cgroup_limit == 2 ** 30
    assert info.cgroup_available == 2 ** 30 - (2 ** 29 - 2 ** 28)
    assert info.available == info.cgroup_available  # below MemAvailable (2.2 GB)


def test_read_cgroup_v2_parent_limit_applies(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "meminfo", MEMINFO)
    write(proc / "self" / "cgroup", CGROUP_V2)
    write(cgroup / "system.slice" / "jetcap.service" / "memory.max", "max\n")
    write(cgroup / "system.slice" / "memory.max", "104857600\n")
    write(cgroup / "system.slice" / "memory.current", "52428800\n")
    info = read_memory_info(str(proc), str(cgroup))
    assert info.cgroup_limit == 100 * 2 ** 20 and info.available == 50 * 2 ** 20


def test_read_cgroup_v1_tree(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "meminfo", MEMINFO)
    write(proc / "self" / "cgroup", "11:memory:/docker/abc123\n")
    memory = cgroup / "memory" / "docker" / "abc123"
    write(memory / "memory.limit_in_bytes", "3000\n")
    write(memory / "memory.usage_in_bytes", "2000\n")
    write(memory / "memory.stat", STAT_V1)
    write(cgroup / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    info = read_memory_info(str(proc), str(cgroup))
    assert info.cgroup_version == 1 and info.cgroup_limit == 3000
    assert info.cgroup_available == 3000 - (2000 - 300)


def test_read_without_cgroup_or_proc(tmp_path):
    write(tmp_path / "proc" / "meminfo", MEMINFO)
    info = read_memory_info(str(tmp_path / "proc"), str(tmp_path / "none"))
    assert info.cgroup_limit is None and info.available == 2270424 * 1024
    assert read_memory_info(str(tmp_path / "nothing"), str(tmp_path / "none")).available is None


def test_this_machine():
    info = read_memory_info()
    assert info.available is not None and info.available > 0
    assert info.mem_total is None or info.available <= info.mem_total


def test_memory_module_imports_without_torch():
    code = "import sys, jetcap.runtime.memory as m; m.read_memory_info(); assert 'torch' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_the_mmap_threshold_is_pinned_where_glibc_runs():
    import platform

    from jetcap.runtime.memory import pin_mmap_threshold

    pinned = pin_mmap_threshold()
    assert pinned is (platform.libc_ver()[0] == "glibc")
