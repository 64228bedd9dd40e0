"""Run `nas_zoo.search.cli` and die as under kill -9 (os._exit, no cleanup) at a chosen point, for resume tests:
DIE_AT_STEP=N  before the loop's N-th step (global step N-1 done);
DIE_AT_SCORE=K before the evolutionary search scores its K-th candidate."""
import os
import sys

from nas_zoo.search import engine, evolution
from nas_zoo.search.cli import main

step_at = int(os.environ.get("DIE_AT_STEP", "0"))
score_at = int(os.environ.get("DIE_AT_SCORE", "0"))

if step_at:
    run_step = engine.Loop._run_step

    def _run_step(self, phase, batch):
        if self.global_step + 1 == step_at:
            os._exit(9)
        return run_step(self, phase, batch)

    engine.Loop._run_step = _run_step

if score_at:
    run = evolution.EvolutionSearch.run

    def _run(self, score, *args, **kwargs):
        count = {"n": len(self.scores)}

        def dying(arch):
            count["n"] += 1
            if count["n"] == score_at:
                os._exit(9)
            return score(arch)
        return run(self, dying, *args, **kwargs)

    evolution.EvolutionSearch.run = _run

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
