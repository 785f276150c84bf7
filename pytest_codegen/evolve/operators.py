"""Genome operators in the study's schema: initial genomes, mutation, crossover, complexity.

A searched genome is a generator and 1-3 execution stages; each stage has an innovation number,
`max_iterations` in [1, 3], an optional analyzer and a refiner (`pipelines.genome`'s frozen
dataclasses, changed with `dataclasses.replace`). Every random choice comes from the `rng`
passed in: the search owns one `random.Random(seed)`.

Mutation: each operator fires independently with its rate, in the fixed order of
`MutationRates`' fields, and one `rng.random()` is drawn per operator whether or not it can
apply, so the stream of random numbers does not depend on the genome's shape.

Beyond the study's schema, `switch_kind` turns a stage into a resample stage (its node writes a
fresh program from the task, shown no program or feedback) or back: the study's own rows found
that a fresh sample fixes more than a repair, so a search should be able to find that loop.
It is off by default and draws no random number while off, so a search without it is the
study's, random stream included.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..pipelines.genome import EXECUTION, GENERATOR_TEMPERATURE, REFINER_TEMPERATURE, RESAMPLE, Genome, Node, Stage
from ..prompts import POOLS

MAX_STAGES = 3
MIN_ITERATIONS, MAX_ITERATIONS = 1, 3
TEMPERATURE_DIGITS = 3  # mutated temperatures are rounded, so equal genomes hash equal


@dataclass(frozen=True)
class MutationRates:
    """Per-genome probability of each operator (the study's defaults) and its parameters."""

    add_stage: float = 0.04
    add_analyzer: float = 0.05
    remove_node: float = 0.18
    swap_model: float = 0.25
    change_prompt: float = 0.30
    temperature: float = 0.20
    iterations: float = 0.10
    switch_kind: float = 0.0  # beyond the study: execution <-> resample stage (off: the study's search)
    # remove_node: which kind of node goes
    remove_analyzer_share: float = 0.60  # else the last stage
    # temperature: Gaussian step, clipped
    temperature_sigma: float = 0.08
    temperature_min: float = 0.05
    temperature_max: float = 1.2
    # iterations: ±1, this often toward fewer
    fewer_iterations_share: float = 0.60

    @classmethod
    def only(cls, name: str, rate: float = 1.0, **params: float) -> MutationRates:
        """Every operator off except `name` (for tests and ablations)."""
        off = {f: 0.0 for f in OPERATORS}
        off[name] = rate
        return cls(**off, **params)


OPERATORS = ("add_stage", "add_analyzer", "remove_node", "swap_model", "change_prompt",
             "temperature", "iterations", "switch_kind")


class InnovationCounter:
    """Global innovation numbers: every new stage gets the next one. Saved in checkpoints."""

    def __init__(self, last: int = 1) -> None:
        self.last = last  # the initial genomes' single stage is innovation 1

    def new(self) -> int:
        self.last += 1
        return self.last


# ------------------------------------------------------------------- genomes and nodes


def node_count(genome: Genome) -> int:
    """Nodes of the complexity penalty: the generator, every refiner and every analyzer."""
    return 1 + sum(1 + (stage.analyzer is not None) for stage in genome.stages)


def complexity_penalty(genome: Genome, per_node: float = 0.02) -> float:
    return round(per_node * node_count(genome), 10)


def mean_rate(rates: Sequence[float]) -> float:
    return sum(rates) / len(rates)


def penalized_fitness(rates: Sequence[float], penalty: float) -> float:
    """Mean pass rate minus the complexity penalty, rounded so that equal scores compare equal."""
    return round(mean_rate(rates) - penalty, 10)


def baseline_genome(model: str) -> Genome:
    """The plain refine loop: generator + one stage of 3 iterations, no analyzer, one model."""
    return Genome(
        Node(model, None, GENERATOR_TEMPERATURE),
        (Stage(1, MAX_ITERATIONS, Node(model, None, REFINER_TEMPERATURE)),),
    )


def random_genome(rng: random.Random, models: Sequence[str]) -> Genome:
    """A minimal genome (generator + stage 1) with random models, prompts and iterations."""
    generator = Node(rng.choice(models), rng.choice(POOLS["generator"]), GENERATOR_TEMPERATURE)
    refiner = Node(rng.choice(models), rng.choice(POOLS["refiner"]), REFINER_TEMPERATURE)
    return Genome(generator, (Stage(1, rng.randint(MIN_ITERATIONS, MAX_ITERATIONS), refiner),))


def initial_population(
    rng: random.Random,
    models: Sequence[str],
    size: int,
    innovations: InnovationCounter,
    rates: MutationRates = MutationRates(),
) -> list[Genome]:
    """The baseline first, then minimal random genomes mutated once (all share innovation 1)."""
    population = [baseline_genome(models[0])]
    while len(population) < size:
        population.append(mutate(random_genome(rng, models), rng, models, innovations, rates))
    return population[:size]


# A node's address in a genome: ("generator",) or (stage index, "analyzer" | "refiner").
Address = tuple


def node_addresses(genome: Genome) -> list[Address]:
    addresses: list[Address] = [("generator",)]
    for index, stage in enumerate(genome.stages):
        if stage.analyzer is not None:
            addresses.append((index, "analyzer"))
        addresses.append((index, "refiner"))
    return addresses


def role_of(address: Address) -> str:
    return address[-1]


def prompt_pool(genome: Genome, address: Address) -> str:
    """The prompt pool of a node: its role's, except a resample stage's node, which generates."""
    if address != ("generator",) and genome.stages[address[0]].kind == RESAMPLE:
        return "generator"
    return role_of(address)


def get_node(genome: Genome, address: Address) -> Node:
    if address == ("generator",):
        return genome.generator
    index, role = address
    return getattr(genome.stages[index], role)


def set_node(genome: Genome, address: Address, node: Node | None) -> Genome:
    if address == ("generator",):
        assert node is not None
        return replace(genome, generator=node)
    index, role = address
    return set_stage(genome, index, replace(genome.stages[index], **{role: node}))


def set_stage(genome: Genome, index: int, stage: Stage) -> Genome:
    stages = list(genome.stages)
    stages[index] = stage
    return replace(genome, stages=tuple(stages))


# ------------------------------------------------------------------- mutation


def mutate(
    genome: Genome,
    rng: random.Random,
    models: Sequence[str],
    innovations: InnovationCounter,
    rates: MutationRates = MutationRates(),
) -> Genome:
    """Apply each operator with its rate; returns a new genome (maybe equal to the input)."""
    g = genome
    if rng.random() < rates.add_stage:
        g = add_stage(g, rng, models, innovations)
    if rng.random() < rates.add_analyzer:
        g = add_analyzer(g, rng, models)
    if rng.random() < rates.remove_node:
        g = remove_node(g, rng, rates.remove_analyzer_share)
    if rng.random() < rates.swap_model:
        g = swap_model(g, rng, models)
    if rng.random() < rates.change_prompt:
        g = change_prompt(g, rng)
    if rng.random() < rates.temperature:
        g = perturb_temperature(g, rng, rates.temperature_sigma, rates.temperature_min, rates.temperature_max)
    if rng.random() < rates.iterations:
        g = step_iterations(g, rng, rates.fewer_iterations_share)
    if rates.switch_kind and rng.random() < rates.switch_kind:
        g = switch_kind(g, rng)
    return g


def add_stage(genome: Genome, rng: random.Random, models: Sequence[str], innovations: InnovationCounter) -> Genome:
    """Append a stage (fresh innovation, 1 iteration, random refiner model) below 3 stages."""
    if len(genome.stages) >= MAX_STAGES:
        return genome
    refiner = Node(rng.choice(models), None, REFINER_TEMPERATURE)
    return replace(genome, stages=genome.stages + (Stage(innovations.new(), MIN_ITERATIONS, refiner),))


def add_analyzer(genome: Genome, rng: random.Random, models: Sequence[str]) -> Genome:
    """Give a random stage without an analyzer one (random model, analyzer-pool prompt)."""
    free = [i for i, stage in enumerate(genome.stages) if stage.analyzer is None and stage.kind != RESAMPLE]
    if not free:
        return genome
    index = rng.choice(free)
    analyzer = Node(rng.choice(models), rng.choice(POOLS["analyzer"]), REFINER_TEMPERATURE)
    return set_stage(genome, index, replace(genome.stages[index], analyzer=analyzer))


def remove_node(genome: Genome, rng: random.Random, analyzer_share: float = 0.6) -> Genome:
    """Remove an analyzer (share 0.6, a random one) or else the last stage.

    When the chosen kind cannot go (no analyzer; a single stage, the minimum), the other kind
    goes instead; with one stage and no analyzer nothing changes.
    """
    analyzed = [i for i, stage in enumerate(genome.stages) if stage.analyzer is not None]
    want_analyzer = rng.random() < analyzer_share
    can_drop_stage = len(genome.stages) > 1
    if analyzed and (want_analyzer or not can_drop_stage):
        index = rng.choice(analyzed)
        return set_stage(genome, index, replace(genome.stages[index], analyzer=None))
    if can_drop_stage:
        return replace(genome, stages=genome.stages[:-1])
    return genome


def swap_model(genome: Genome, rng: random.Random, models: Sequence[str]) -> Genome:
    """A random node gets another model of the pool (nothing changes with a pool of one)."""
    address = rng.choice(node_addresses(genome))
    node = get_node(genome, address)
    others = [m for m in models if m != node.model]
    if not others:
        return genome
    return set_node(genome, address, replace(node, model=rng.choice(others)))


def change_prompt(genome: Genome, rng: random.Random) -> Genome:
    """A random node gets another system prompt from its role's pool."""
    address = rng.choice(node_addresses(genome))
    node = get_node(genome, address)
    others = [p for p in POOLS[prompt_pool(genome, address)] if p != node.system_prompt]
    if not others:
        return genome
    return set_node(genome, address, replace(node, system_prompt=rng.choice(others)))


def perturb_temperature(
    genome: Genome, rng: random.Random, sigma: float = 0.08, low: float = 0.05, high: float = 1.2
) -> Genome:
    """A random node's temperature + N(0, sigma), clipped to [low, high]."""
    address = rng.choice(node_addresses(genome))
    node = get_node(genome, address)
    value = min(high, max(low, node.temperature + rng.gauss(0.0, sigma)))
    return set_node(genome, address, replace(node, temperature=round(value, TEMPERATURE_DIGITS)))


def step_iterations(genome: Genome, rng: random.Random, fewer_share: float = 0.6) -> Genome:
    """A random stage's max_iterations ±1 (share 0.6 toward fewer), clipped to [1, 3]."""
    index = rng.randrange(len(genome.stages))
    stage = genome.stages[index]
    step = -1 if rng.random() < fewer_share else 1
    value = min(MAX_ITERATIONS, max(MIN_ITERATIONS, stage.max_iterations + step))
    return set_stage(genome, index, replace(stage, max_iterations=value))


_SWITCHED = {EXECUTION: RESAMPLE, RESAMPLE: EXECUTION}


def switch_kind(genome: Genome, rng: random.Random) -> Genome:
    """A random stage switches between refining from feedback and sampling the task again.

    A stage that becomes a resample stage loses its analyzer (there is no program to diagnose);
    its node keeps model and temperature, and its system prompt goes back to the default of its
    new role, since the other role's prompts ask for something else."""
    index = rng.randrange(len(genome.stages))
    stage = genome.stages[index]
    kind = _SWITCHED.get(stage.kind)
    if kind is None:  # a review stage: not in the searched schema
        return genome
    node = replace(stage.refiner, system_prompt=None)
    return set_stage(genome, index, replace(stage, kind=kind, refiner=node, analyzer=None))


# ------------------------------------------------------------------- crossover


def crossover(fitter: Genome, weaker: Genome, rng: random.Random, weaker_rate: float = 0.3) -> Genome:
    """A child aligned by innovation number (the caller decides which parent is fitter).

    The generator (present in both) and every stage whose innovation both parents have come
    from either parent by a coin flip; stages only the fitter parent has (disjoint or excess)
    are always inherited, those only the weaker has with probability `weaker_rate`. Stages
    are kept in innovation order; if that makes more than 3, weaker-only stages are dropped
    (highest innovation first), so the child never exceeds the schema.
    """
    generator = fitter.generator if rng.random() < 0.5 else weaker.generator
    ours = {stage.innovation: stage for stage in fitter.stages}
    theirs = {stage.innovation: stage for stage in weaker.stages}
    stages: list[Stage] = []
    weaker_only: list[Stage] = []
    for innovation in sorted(set(ours) | set(theirs)):
        if innovation in ours and innovation in theirs:
            stages.append(ours[innovation] if rng.random() < 0.5 else theirs[innovation])
        elif innovation in ours:
            stages.append(ours[innovation])
        elif rng.random() < weaker_rate:
            stages.append(theirs[innovation])
            weaker_only.append(theirs[innovation])
    while len(stages) > MAX_STAGES:
        stages.remove(weaker_only.pop())
    return Genome(generator, tuple(stages))
