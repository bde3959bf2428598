"""facekd.export.cpu_features: the CPU's INT8 capability from /proc/cpuinfo text."""
from facekd.export.cpu_features import cpu_flags, describe_int8_capability, int8_capability, u8s8_saturates

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n"


def test_int8_capability_reads_the_flags():
    assert cpu_flags(EPYC) == {"fpu", "sse2", "avx", "avx2", "fma", "bmi2"}
    assert int8_capability(EPYC) == {"AVX2": True, "AVX-512": False, "VNNI": False, "AMX-INT8": False}
    assert int8_capability(SAPPHIRE) == {"AVX2": True, "AVX-512": True, "VNNI": True, "AMX-INT8": True}
    assert int8_capability("no flags here") == {"AVX2": False, "AVX-512": False, "VNNI": False, "AMX-INT8": False}
    assert describe_int8_capability(int8_capability(EPYC)) == \
        "CPU INT8 support: AVX2 yes, AVX-512 no, VNNI no, AMX-INT8 no; 8-bit weights saturate here (use 7-bit: reduce_range)"
    assert describe_int8_capability(int8_capability(SAPPHIRE)) == \
        "CPU INT8 support: AVX2 yes, AVX-512 yes, VNNI yes, AMX-INT8 yes"
    assert describe_int8_capability().startswith("CPU INT8 support: AVX2 ")   # this machine's


def test_u8s8_saturates_on_x86_without_vnni_or_amx_only():
    """VPMADDUBSW's int16 sums saturate where no VNNI / AMX instruction replaces it; ARM has no such flags."""
    skylake = "flags\t: avx2 avx512f avx512bw\n"
    arm = "Features\t: fp asimd asimddp\n"
    assert u8s8_saturates(int8_capability(EPYC)) and u8s8_saturates(int8_capability(skylake))
    assert not u8s8_saturates(int8_capability(SAPPHIRE)) and not u8s8_saturates(int8_capability(arm))
    assert not u8s8_saturates(int8_capability("flags\t: avx2 avx_vnni\n"))
