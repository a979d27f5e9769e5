"""Zeus: the composition layer above the stages. The ``zeus`` command line (``zeus.cli``), the new-scan
pipeline (``zeus.pipeline``: prepare -> stage-1 instructions -> stage-2 model) and the report
(``zeus.report``, which reads both stages' outputs). Nothing below this package imports it."""
