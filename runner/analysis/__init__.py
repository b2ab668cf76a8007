"""Analysis of finished rounds: how their outputs relate, beyond byte equality.

The package will hold compare, diff, drift, verify and the report once they move here;
for now it holds the statistics they will call:

    equality    a two-sample test of whether two rounds' outputs come from the same
                distribution (MMD over (prompt, completion) pairs, permutation p-value)

Modules here are pure: no I/O, no database. numpy is imported by the modules that need
it, so import them lazily from code on the CLI's start-up path.
"""
