"""Cross-modal distillation: a thermal student learns the color teacher's neck features (paper Sec. 3.2)."""

from invismap.distill.student import ThermalDetector, ThermalStudent, load_student

__all__ = ["ThermalDetector", "ThermalStudent", "load_student"]
