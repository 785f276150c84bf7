"""NEAT-inspired search over pipeline genomes, with an honest held-out check of the champion.

Modules, one concept each:

- `operators`: mutation (`MutationRates`), crossover by innovation number, the innovation
  counter, initial genomes, the baseline genome and the complexity penalty;
- `species`: compatibility distance, speciation with an adaptive threshold, fitness sharing
  and the offspring each species gets;
- `reproduce`: one generation's offspring (elitism, parents, crossover, mutation);
- `subsets`: the search and held-out problem subsets (random or stratified by difficulty);
- `evaluate`: running a genome K times (in-process or in spawned worker processes), cached;
- `config`: the search's settings (`SearchConfig`) and its checkpointed state (`SearchState`);
- `search`: the loop, its checkpoint/resume, the genome log and the progress bar;
- `selection`: the champion and the baseline re-evaluated on held-out problems (with its own
  progress bar), the report.

The imports go one way: `search` → `selection` → `config` (and the modules above).
"""

from .config import SearchConfig, SearchState
from .errors import EvolveError
from .evaluate import EvalJob, EvalResult, Evaluator, evaluation_seed
from .operators import (
    InnovationCounter,
    MutationRates,
    baseline_genome,
    complexity_penalty,
    crossover,
    initial_population,
    mutate,
    node_count,
)
from .search import search
from .selection import Assessment, SelectionResult, describe
from .species import DistanceWeights, Species, ThresholdRule, distance, speciate

__all__ = [
    "Assessment", "DistanceWeights", "EvalJob", "EvalResult", "Evaluator", "EvolveError",
    "InnovationCounter", "MutationRates", "SearchConfig", "SearchState", "SelectionResult",
    "Species", "ThresholdRule", "baseline_genome", "complexity_penalty", "crossover", "describe",
    "distance", "evaluation_seed", "initial_population", "mutate", "node_count", "search",
    "speciate",
]
