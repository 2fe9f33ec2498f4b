"""What users touch: the ``vdc`` command line, reports, training hooks (Lightning) and the visdatcompy API."""
