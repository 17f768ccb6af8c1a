"""vidhash.bench.nvml: the ctypes NVML sampler, against a stand-in library (no GPU here)."""
import ctypes

from vidhash.bench.nvml import GpuClocks, reasons


class _FakeNvml:
    """Answers as libnvidia-ml does: a return code, the value written through the pointer."""

    def __init__(self, fail=()):
        self.fail = set(fail)

    def _put(self, name, ref, value):
        if name in self.fail:
            return 3  # NVML_ERROR_NOT_SUPPORTED
        ref._obj.value = value
        return 0

    def nvmlDeviceGetClockInfo(self, handle, kind, ref):
        assert kind.value == 1  # NVML_CLOCK_SM
        return self._put("clock", ref, 1755)

    def nvmlDeviceGetTemperature(self, handle, sensor, ref):
        return self._put("temp", ref, 71)

    def nvmlDeviceGetPowerUsage(self, handle, ref):
        return self._put("power", ref, 512_345)  # mW

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle, ref):  # an older driver: no ...EventReasons
        return self._put("reasons", ref, 0x4 | 0x40)


def test_sample_reads_clock_temperature_power_and_reasons():
    smp = GpuClocks(_FakeNvml(), ctypes.c_void_p()).sample()
    assert smp == [1755, 71, 512.345, 0x44]
    assert reasons(smp[3]) == ["sw_power_cap", "hw_thermal_slowdown"]


def test_a_value_nvml_does_not_give_is_none():
    smp = GpuClocks(_FakeNvml(fail={"power", "reasons"}), ctypes.c_void_p()).sample()
    assert smp == [1755, 71, None, None]


def test_reasons_names_unknown_bits():
    assert reasons(None) == [] and reasons(0) == []
    assert reasons(0x1 | 0x10000) == ["gpu_idle", "0x10000"]


def test_no_library_no_sampler():
    assert GpuClocks.open(library="libno-such-nvml.so") is None
