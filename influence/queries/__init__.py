"""The queries room: YAML query files and the ``influence`` command line.

Holds the query schema (its declarations validate a file and print its JSON Schema), the
DoI and QoI kinds a file may name, the loading of models and data, the running of
queries and the writing of their outputs, and the CLI.

May import: ``influence.workflows`` and ``influence.engine`` (their package names only),
``slices``, ``doi``, ``qoi`` and itself (``tests/test_structure.py`` checks this).
Nothing imports the queries room but the command line and the ``influence.query``
path.
"""
