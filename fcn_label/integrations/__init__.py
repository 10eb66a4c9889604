"""Live links to annotation tools: modules a tool loads itself (CVAT's auto-annotation functions:
:mod:`fcn_label.integrations.cvat`). Each needs its tool's own package (an extra) and imports it only there."""
