"""The paper's experiments: Fig. 5 (``analysis``), Section 2 (``psp_comparison``) and ``reproduce``."""
