"""Compatibility distance, speciation with an adaptive threshold, and fitness sharing.

Alignment (what the distance compares with what): the two generators are aligned; stages are
aligned when they carry the same innovation number (NEAT's gene matching); inside an aligned
stage pair the refiners are aligned, and the analyzers when both stages have one. Then

    distance = 1.0 * Δstages      stages whose innovation only one genome has (disjoint + excess)
             + 0.5 * Δanalyzers   aligned stage pairs where exactly one stage has an analyzer
             + 0.5 * Δkinds       aligned stage pairs of different kinds (refine vs resample)
             + 0.4 * (model mismatches over aligned nodes)
             + 0.2 * (system-prompt mismatches over aligned nodes)
             + 0.1 * (Σ |Δtemperature| over aligned nodes + Σ |Δmax_iterations| over aligned stages)

Nodes of unaligned stages count only through Δstages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..pipelines.genome import Genome, Node


@dataclass(frozen=True)
class DistanceWeights:
    stage: float = 1.0
    analyzer: float = 0.5
    kind: float = 0.5
    model: float = 0.4
    prompt: float = 0.2
    parameter: float = 0.1  # per unit of |Δtemperature| and of |Δmax_iterations|


def _node_distance(a: Node, b: Node, w: DistanceWeights) -> float:
    return (
        w.model * (a.model != b.model)
        + w.prompt * (a.system_prompt != b.system_prompt)
        + w.parameter * abs(a.temperature - b.temperature)
    )


def distance(a: Genome, b: Genome, weights: DistanceWeights = DistanceWeights()) -> float:
    """Compatibility distance (see the module docstring for the alignment)."""
    w = weights
    ours = {stage.innovation: stage for stage in a.stages}
    theirs = {stage.innovation: stage for stage in b.stages}
    shared = sorted(set(ours) & set(theirs))
    total = w.stage * len(set(ours) ^ set(theirs))
    total += _node_distance(a.generator, b.generator, w)
    for innovation in shared:
        x, y = ours[innovation], theirs[innovation]
        total += _node_distance(x.refiner, y.refiner, w)
        total += w.parameter * abs(x.max_iterations - y.max_iterations)
        total += w.kind * (x.kind != y.kind)
        if (x.analyzer is None) != (y.analyzer is None):
            total += w.analyzer
        elif x.analyzer is not None and y.analyzer is not None:
            total += _node_distance(x.analyzer, y.analyzer, w)
    return round(total, 10)


@dataclass
class Species:
    id: int
    representative: Genome
    members: list[int] = field(default_factory=list)  # indices into the population


@dataclass(frozen=True)
class ThresholdRule:
    """Adapt the compatibility threshold toward a target number of species."""

    target: int = 4
    initial: float = 1.0
    step: float = 0.1
    minimum: float = 0.05

    def adapt(self, threshold: float, species_count: int) -> float:
        if species_count < self.target:
            threshold -= self.step
        elif species_count > self.target:
            threshold += self.step
        return round(max(self.minimum, threshold), 10)


def speciate(
    population: Sequence[Genome],
    representatives: Sequence[tuple[int, Genome]],
    threshold: float,
    next_id: int,
    weights: DistanceWeights = DistanceWeights(),
) -> tuple[list[Species], int]:
    """Assign each genome, in order, to the first species whose representative is closer than
    `threshold` (last generation's species first, in id order, then those founded now); a
    genome close to none founds a species and represents it. Empty species disappear.
    Returns the species and the next free species id."""
    species = [Species(sid, genome) for sid, genome in representatives]
    for index, genome in enumerate(population):
        for candidate in species:
            if distance(genome, candidate.representative, weights) < threshold:
                candidate.members.append(index)
                break
        else:
            species.append(Species(next_id, genome, [index]))
            next_id += 1
    return [s for s in species if s.members], next_id


def next_representatives(
    population: Sequence[Genome], species: Sequence[Species], fitness: Sequence[float]
) -> list[tuple[int, Genome]]:
    """Each species' best member (the first on ties) represents it in the next generation."""
    chosen = []
    for s in species:
        best = max(s.members, key=lambda i: (fitness[i], -i))
        chosen.append((s.id, population[best]))
    return chosen


def adjusted_fitness(fitness: Sequence[float], species: Sequence[Species]) -> list[float]:
    """Fitness sharing: each genome's fitness divided by the size of its species."""
    adjusted = [0.0] * len(fitness)
    for s in species:
        for index in s.members:
            adjusted[index] = fitness[index] / len(s.members)
    return adjusted


def allocate_offspring(
    fitness: Sequence[float], species: Sequence[Species], slots: int, floor: float = 0.01
) -> dict[int, int]:
    """Offspring per species id, proportional to the species' summed adjusted fitness.

    Fitness can be negative (pass rate 0 minus the complexity penalty), so the shares use
    fitness shifted to start at `floor` (min over the population → floor) before sharing;
    integer counts by largest remainder, ties to the lower species id.
    """
    if slots <= 0 or not species:
        return {s.id: 0 for s in species}
    low = min(fitness)
    shifted = [f - low + floor for f in fitness]
    shares = {s.id: sum(shifted[i] / len(s.members) for i in s.members) for s in species}
    total = sum(shares.values())
    exact = {sid: slots * share / total for sid, share in shares.items()}
    counts = {sid: int(value) for sid, value in exact.items()}
    left = slots - sum(counts.values())
    for sid in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:left]:
        counts[sid] += 1
    return counts
