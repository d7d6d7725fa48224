"""CPU instruction-set record of the int8-cpu variant, read from a real cpuinfo-format file."""
from jetcap.util.cpu import cpu_flags, int8_isa


def test_x86_and_arm_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert int8_isa(cpu_flags(str(x86)))["int8_instructions"] == ["avx512_vnni", "avx512bw", "avx2"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n")
    assert int8_isa(cpu_flags(str(arm)))["int8_instructions"] == ["asimddp", "asimd"]


def test_unreadable_cpuinfo_is_no_flags(tmp_path):
    assert cpu_flags(str(tmp_path / "missing")) == set()
    assert int8_isa(set())["int8_instructions"] == []
