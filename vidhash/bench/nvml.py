"""The GPU's SM clock, temperature, power and clock-event (throttle) reasons, read through NVML.

NVML is the driver's own library (``libnvidia-ml.so.1``, installed with every NVIDIA driver); it is
called here through :mod:`ctypes`, so no Python package is needed. ``vidhash bench generation``
samples it after every chunk (outside the timed interval) so that a clip whose later chunks run
slower can be told apart from a GPU that clocked down under load: the row keeps the samples, and
the verdict prints the time ratio at equal clock.

>>> GpuClocks.open(library="libno-such-nvml.so") is None  # no driver library: no sampler
True
>>> reasons(0x4 | 0x20)
['sw_power_cap', 'sw_thermal_slowdown']
"""
from __future__ import annotations

import ctypes

NVML_SUCCESS = 0
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0

REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
"""NVML's clock-event reason bits (``nvmlClocksEventReason*``, formerly ``nvmlClocksThrottleReason*``)."""


def reasons(mask: int | None) -> list[str]:
    """Names of the reason bits set in ``mask`` (unknown bits as hex), in bit order; [] for None."""
    if not mask:
        return []
    out = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    return out + ([hex(rest)] if rest else [])


class GpuClocks:
    """One GPU's NVML handle; :meth:`sample` reads its state now. Build it with :meth:`open`."""

    def __init__(self, lib, handle):
        self._lib, self._handle = lib, handle

    @classmethod
    def open(cls, index: int = 0, library: str = "libnvidia-ml.so.1") -> GpuClocks | None:
        """The sampler of NVML device ``index``, or None where NVML cannot be loaded or initialised
        (no NVIDIA driver, a CPU machine): callers then record no samples."""
        try:
            lib = ctypes.CDLL(library)
            if lib.nvmlInit_v2() != NVML_SUCCESS:
                return None
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) != NVML_SUCCESS:
                return None
        except (OSError, AttributeError):
            return None
        return cls(lib, handle)

    @classmethod
    def for_torch_device(cls, device) -> GpuClocks | None:
        """The sampler of a torch CUDA device (its NVML index honours ``CUDA_VISIBLE_DEVICES``)."""
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        try:  # torch's own mapping of a CUDA index to NVML's (private; absent in some versions)
            index = torch.cuda._get_nvml_device_index(index)
        except Exception:  # noqa: BLE001 - fall back to the CUDA index
            pass
        return cls.open(index)

    def _uint(self, fn: str, *args) -> int | None:
        out = ctypes.c_uint()
        try:
            ok = getattr(self._lib, fn)(self._handle, *args, ctypes.byref(out)) == NVML_SUCCESS
        except (AttributeError, ctypes.ArgumentError):  # a driver without the call: no value, the bench goes on
            return None
        return out.value if ok else None

    def _reasons(self) -> int | None:
        out = ctypes.c_ulonglong()
        for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            try:
                if getattr(self._lib, fn)(self._handle, ctypes.byref(out)) == NVML_SUCCESS:
                    return out.value
            except (AttributeError, ctypes.ArgumentError):
                continue
        return None

    def sample(self) -> list:
        """``[SM MHz, temperature °C, power W, reason mask]``; an entry NVML did not give is None."""
        power_mw = self._uint("nvmlDeviceGetPowerUsage")
        return [self._uint("nvmlDeviceGetClockInfo", ctypes.c_uint(NVML_CLOCK_SM)),
                self._uint("nvmlDeviceGetTemperature", ctypes.c_uint(NVML_TEMPERATURE_GPU)),
                None if power_mw is None else power_mw / 1000, self._reasons()]
