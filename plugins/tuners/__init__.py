"""Generic, config-free tools for adapter experts: merging (``merge``), LoRAHub coefficients (``lorahub``).

Import the submodules directly (``from plugins.tuners.merge import ties``); this package registers nothing.
"""
