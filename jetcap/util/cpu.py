"""What the CPU's integer dot-product instructions are (Python 3.6).

ONNX Runtime's CPU int8 kernels differ by instruction set (x86: AVX-512 VNNI / AVX-VNNI, else AVX2 u8s8,
whose pairwise multiply-add saturates in int16; ARM: the v8.2 dot product, else plain NEON), and so do
their results: a figure measured on one CPU holds for that kind of CPU.  The ``int8-cpu`` variant records
where it was checked.
"""
import platform

# /proc/cpuinfo flags that name an int8 dot product, in the order they are reported
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "avx512bw", "avx2", "asimddp", "asimd")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The ``flags`` / ``Features`` of the first CPU in ``cpuinfo`` (empty set when unreadable)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def int8_isa(flags=None):
    """``{"machine": ..., "int8_instructions": [...]}``: the dot-product instruction sets of this CPU
    among :data:`DOT_PRODUCT_FLAGS` (``flags`` default: read from /proc/cpuinfo)."""
    flags = cpu_flags() if flags is None else set(flags)
    return {"machine": platform.machine(), "int8_instructions": [f for f in DOT_PRODUCT_FLAGS if f in flags]}
