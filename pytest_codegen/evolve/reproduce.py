"""One generation's offspring: elitism, offspring per species, crossover and mutation."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..pipelines.genome import Genome
from .operators import InnovationCounter, MutationRates, crossover, mutate
from .species import Species, allocate_offspring


@dataclass(frozen=True)
class ReproductionRules:
    population: int = 20
    elitism: int = 2  # the best genomes of the population, copied unchanged
    survival: float = 0.5  # the top share of each species may parent offspring (at least 1)
    crossover_rate: float = 0.75  # else a child is a mutated copy of one parent
    weaker_gene_rate: float = 0.3  # crossover: disjoint/excess stages of the weaker parent
    rates: MutationRates = MutationRates()


def reproduce(
    population: Sequence[Genome],
    fitness: Sequence[float],
    species: Sequence[Species],
    rng: random.Random,
    models: Sequence[str],
    innovations: InnovationCounter,
    rules: ReproductionRules = ReproductionRules(),
) -> list[Genome]:
    """The next population.

    The `elitism` fittest genomes (first on ties) are copied unchanged. The other slots are
    shared among species in proportion to their summed adjusted fitness (fitness sharing,
    `species.allocate_offspring`). In a species, the top `survival` share (by fitness) are
    parents; each child is, with `crossover_rate` and at least two parents, the crossover of
    two random parents (the fitter one by fitness, a coin flip on equal fitness), else a copy
    of one random parent; every child is then mutated.
    """
    ranked = sorted(range(len(population)), key=lambda i: (-fitness[i], i))
    children = [population[i] for i in ranked[: rules.elitism]]
    counts = allocate_offspring(fitness, species, rules.population - len(children))
    for s in sorted(species, key=lambda s: s.id):
        members = sorted(s.members, key=lambda i: (-fitness[i], i))
        parents = members[: max(1, math.ceil(len(members) * rules.survival))]
        for _ in range(counts[s.id]):
            if len(parents) >= 2 and rng.random() < rules.crossover_rate:
                a, b = rng.sample(parents, 2)
                if fitness[a] < fitness[b] or (fitness[a] == fitness[b] and rng.random() < 0.5):
                    a, b = b, a
                child = crossover(population[a], population[b], rng, rules.weaker_gene_rate)
            else:
                child = population[rng.choice(parents)]
            children.append(mutate(child, rng, models, innovations, rules.rates))
    return children
