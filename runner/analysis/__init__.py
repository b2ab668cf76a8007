"""Analysis of rounds: what changed between them, beyond byte equality.

    compare       two finished rounds job by job: measures, summary, stored comparison
    distribution  the distribution test's verdict at alpha, as stored and shown
    equality      the two-sample test itself: MMD over (job, completion) pairs with string
                  kernels (``kernels``), seeded permutation p-value (pure, numpy)
    drift         drift reports of finished scheduled rounds
    diff          one job's word-level diff between two rounds
    verify        K runs per job: determinism and each job's own noise
    similarity    edit-distance similarity, divergence, word diff (pure)
    embedding     cosine distance of outputs through an endpoint's /v1/embeddings

numpy is imported by the functions that need it, so that commands which do not compare
rounds start fast.
"""
