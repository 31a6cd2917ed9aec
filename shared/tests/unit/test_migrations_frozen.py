"""Shipped migrations are frozen: a database that applied one never runs it again, so an edit
would silently split the fleet. Every machinery step and every service revision is pinned
here by the sha256 of the SQL it runs (rendered offline, whitespace-normalised, so a
reformatted docstring or comment does not count as a change but any SQL change does).

A new step or revision is added to the pins below in the same commit; the failure message
prints the line to paste. A pin never changes afterwards.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory

from shared.persistence.machinery_migrations import STEPS, Step
from shared.persistence.migrations import execute_script

SERVICES = Path(__file__).resolve().parents[3] / "services"

# step name -> (sha256 of its upgrade SQL, sha256 of its downgrade SQL)
SHIPPED_STEPS: dict[str, tuple[str, str]] = {
    "0001_initial": (
        "e2bca351204446fb219954c87fee59688806efe22da7663c28b30856256aecfa",
        "f9d55a75e4b6e8b59e1f6af3d0502b5c82e1f3306cfcbc22059ac3c37e7ed49a",
    ),
    "0002_dead_letter_identity": (
        "b9fdbd730a9c701fc0f683c4c680033dacf13625cc8b21074c328f8b809b6e18",
        "be0edb5ce418fbc1437b3550f9014bfeea2bdf0bc8cd1b1f26fb2534f6e62ab3",
    ),
    "0003_sequence_retention": (
        "b0196de73c64f87d20f77e3bcc8060399ce8ca18aa39addea2b48f5854aa658e",
        "b48e77f86b99d039f181d1f7c62e927992bbed14467b0df6c4f1157da980d0a2",
    ),
    "0004_debounced_events": (
        "09ecc88aa4445ed15a28abaccac735ea356af67017ab85ebe0236d42adaa9887",
        "668a00d94d6b0a2030e9c6eacee3601e8477febed4146948f2e4fd3f75d24895",
    ),
    "0005_consumer_attempts": (
        "9e12bd55ac72c16ef42d8a2aaea3798d9a78a44d748823898400fd5e5157a6f3",
        "6d14aab805b9f33d8a7c86d42d9270736caab3139e761cd358aaeefa1bd777c8",
    ),
    "0006_parked_count": (
        "5250aafc8772293ecf912a465ea85f5dc3f7ff56527b69425d99b092b2aff75d",
        "be3378d61c486c87cedbe7b066f78acf1ccff37a1fc11a640c2ca54c4c869cc2",
    ),
}

# (service, revision) -> (sha256 of upgrade() SQL, sha256 of downgrade() SQL)
SHIPPED_REVISIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("order", "0001"): (
        "b9fed416e3aebd263d7e4f20055ee2cf4e9c56ccd3b9d0d34beafbcf5ca9df2d",
        "7b9cb990b5363a3c4b84638da9b324473cc851ac4e815a5dba682c2dd812e7f2",
    ),
    ("order", "0002"): (
        "b9fdbd730a9c701fc0f683c4c680033dacf13625cc8b21074c328f8b809b6e18",
        "be0edb5ce418fbc1437b3550f9014bfeea2bdf0bc8cd1b1f26fb2534f6e62ab3",
    ),
    ("order", "0003"): (
        "e142fe92bd8e4aade667e056b17f8584d1ff147ef66ca738bef6d76513f263a3",
        "dd2d3b48721816ed180a4b06b94aad38522b93de1b22c428546632feae5c7b0e",
    ),
    ("order", "0004"): (
        "4526aca941aff411d3802a31f376d43564151259c94e4f5c9e2fd792b6b34f0d",
        "f7b82c32e3cf61af1660a066a7fe0b29162fc6bb9b0c3123334c7e95b3e52f10",
    ),
    ("inventory", "0001"): (
        "ff85f66516883cdfa2548247174d69f16f00b55be386cd5f69b050d5850da139",
        "30c44d34eafd0c81486ad74e3a46f594af197b7de63fe6a61ed6ccee0168a66a",
    ),
    ("inventory", "0002"): (
        "b9fdbd730a9c701fc0f683c4c680033dacf13625cc8b21074c328f8b809b6e18",
        "be0edb5ce418fbc1437b3550f9014bfeea2bdf0bc8cd1b1f26fb2534f6e62ab3",
    ),
    ("inventory", "0003"): (
        "39589d107747be64fd143dd11741b90604f3ef348b6316ee9adf9e41ec48d06e",
        "de7d4c0b879d34f9c1843e95f29efdeefa1eb5e506bca7a852d29964e64e8c36",
    ),
    ("inventory", "0004"): (
        "4526aca941aff411d3802a31f376d43564151259c94e4f5c9e2fd792b6b34f0d",
        "f7b82c32e3cf61af1660a066a7fe0b29162fc6bb9b0c3123334c7e95b3e52f10",
    ),
    ("shipping", "0001"): (
        "4796953a408b02d967e2127e3c796f1d986eab2cefba73ada3157ef6595c349e",
        "b203bc10dbf65344551d7ca06c0f881defad51092a114f2b9dad481b6bffdf36",
    ),
    ("shipping", "0002"): (
        "8838498fd2f4744e7af684560897d9a2cbcfcb436ddd1b26c354a81403f543aa",
        "8d1c6a8cf89368b8b00309ded0b6dbd828b94e1b655395884ed18b45ae8977f7",
    ),
    ("shipping", "0003"): (
        "b9fdbd730a9c701fc0f683c4c680033dacf13625cc8b21074c328f8b809b6e18",
        "be0edb5ce418fbc1437b3550f9014bfeea2bdf0bc8cd1b1f26fb2534f6e62ab3",
    ),
    ("shipping", "0004"): (
        "4526aca941aff411d3802a31f376d43564151259c94e4f5c9e2fd792b6b34f0d",
        "f7b82c32e3cf61af1660a066a7fe0b29162fc6bb9b0c3123334c7e95b3e52f10",
    ),
    ("order", "0005"): (
        "09ecc88aa4445ed15a28abaccac735ea356af67017ab85ebe0236d42adaa9887",
        "668a00d94d6b0a2030e9c6eacee3601e8477febed4146948f2e4fd3f75d24895",
    ),
    ("inventory", "0005"): (
        "09ecc88aa4445ed15a28abaccac735ea356af67017ab85ebe0236d42adaa9887",
        "668a00d94d6b0a2030e9c6eacee3601e8477febed4146948f2e4fd3f75d24895",
    ),
    ("shipping", "0005"): (
        "09ecc88aa4445ed15a28abaccac735ea356af67017ab85ebe0236d42adaa9887",
        "668a00d94d6b0a2030e9c6eacee3601e8477febed4146948f2e4fd3f75d24895",
    ),
    ("shipping", "0006"): (
        "b87de67450b8d7a829b6b8029812e68b0d8ed9cd671939a58957155e95000e0c",
        "9a8bf988d71622107ca9ce49c3da9f58ef96df492f4313c56620e5a0e34bb19e",
    ),
    ("shipping", "0007"): (
        "79bac018bc5f0f6ef1d04e9ab9aaf721899d67aba790674f27d6a7c6ad05e02e",
        "badd6c31256725f81f8f6eafaa56f48e7f97040af078209cb9ae6be00a2f8486",
    ),
    ("order", "0006"): (
        "a4cfb4923986eec943e81ebbdb88731dec4652eeea204e59f290036171e78893",
        "5564e88dcffaaafeb1a263bbded1cb2ae4809a1e30e30df9838f0d595f02d1bb",
    ),
    ("inventory", "0006"): (
        "a4cfb4923986eec943e81ebbdb88731dec4652eeea204e59f290036171e78893",
        "5564e88dcffaaafeb1a263bbded1cb2ae4809a1e30e30df9838f0d595f02d1bb",
    ),
    ("shipping", "0008"): (
        "a4cfb4923986eec943e81ebbdb88731dec4652eeea204e59f290036171e78893",
        "5564e88dcffaaafeb1a263bbded1cb2ae4809a1e30e30df9838f0d595f02d1bb",
    ),
    ("inventory", "0007"): (
        "5b82890be5a25ee245626bb97475df9524a8150135282b021ef1bd4f5fe8d681",
        "c712eebbbf341eb2e7956df8813a3725207835e47d78c612db3dd3483411726e",
    ),
    ("order", "0007"): (
        "dc1879130fed524a313fbe07b092bfacf0b053f4c5325bab7526b3cfd99d6155",
        "a13c23d18b1719f9042f2169f413bcc26471b756948859773d7fbd88feea407c",
    ),
    ("inventory", "0008"): (
        "dc1879130fed524a313fbe07b092bfacf0b053f4c5325bab7526b3cfd99d6155",
        "a13c23d18b1719f9042f2169f413bcc26471b756948859773d7fbd88feea407c",
    ),
    ("shipping", "0009"): (
        "dc1879130fed524a313fbe07b092bfacf0b053f4c5325bab7526b3cfd99d6155",
        "a13c23d18b1719f9042f2169f413bcc26471b756948859773d7fbd88feea407c",
    ),
}

FROZEN = (
    "add a new revision instead of editing an applied one: a database that ran it will not run "
    "it again. Put a machinery change in a new step in "
    "shared.persistence.machinery_migrations and a new "
    "revision in every service that applies it. (Only if this has never been merged or "
    "deployed anywhere may its pin change.)"
)


def revision_chain(service: str) -> list[ModuleType]:
    """The service's revision modules, base first."""
    config = Config()
    config.set_main_option("script_location", str(SERVICES / service / "migrations"))
    revisions = list(ScriptDirectory.from_config(config).walk_revisions())
    return [r.module for r in reversed(revisions)]


def rendered(run: Callable[[], None]) -> str:
    """The SQL ``run`` (a revision's ``upgrade``/``downgrade``) emits, rendered offline."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    with Operations.context(context):
        run()
    return buffer.getvalue()


def normalised(sql: str) -> str:
    return " ".join(sql.split())


def digest(sql: str) -> str:
    return hashlib.sha256(normalised(sql).encode()).hexdigest()


def revisions() -> list[tuple[str, ModuleType]]:
    return [(s, m) for s in ("order", "inventory", "shipping") for m in revision_chain(s)]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_a_shipped_machinery_step_is_never_edited(step: Step) -> None:
    actual = (digest(step.upgrade), digest(step.downgrade))
    assert step.name in SHIPPED_STEPS, (
        f"new machinery step {step.name}: pin it in {__name__}.SHIPPED_STEPS with "
        f"{step.name!r}: {actual!r},"
    )
    assert actual == SHIPPED_STEPS[step.name], f"machinery step {step.name} changed: {FROZEN}"


@pytest.mark.parametrize(
    ("service", "module"), revisions(), ids=lambda v: v if isinstance(v, str) else v.revision
)
def test_a_shipped_service_revision_is_never_edited(service: str, module: ModuleType) -> None:
    key = (service, module.revision)
    actual = (digest(rendered(module.upgrade)), digest(rendered(module.downgrade)))
    assert key in SHIPPED_REVISIONS, (
        f"new revision {service} {module.revision}: pin it in "
        f"{__name__}.SHIPPED_REVISIONS with {key!r}: {actual!r},"
    )
    assert actual == SHIPPED_REVISIONS[key], (
        f"{service} revision {module.revision} changed: {FROZEN}"
    )


def test_no_shipped_step_or_revision_is_removed() -> None:
    assert set(SHIPPED_STEPS) <= {s.name for s in STEPS}, FROZEN
    assert set(SHIPPED_REVISIONS) <= {(s, m.revision) for s, m in revisions()}, FROZEN


def test_machinery_steps_are_numbered_in_order() -> None:
    numbers = [step.name.split("_", 1)[0] for step in STEPS]
    assert numbers == [f"{n:04d}" for n in range(1, len(STEPS) + 1)]


@pytest.mark.parametrize("service", ["order", "inventory", "shipping"])
def test_every_service_applies_every_machinery_step_once_in_order(service: str) -> None:
    """A new step needs a new revision in every service, or that service's database drifts
    from the others (and from ``shared.testing.infra.create_database``)."""
    chain = normalised("".join(rendered(m.upgrade) for m in revision_chain(service)))
    positions = []
    for step in STEPS:
        step_sql = normalised(rendered(partial(execute_script, step.upgrade)))
        assert chain.count(step_sql) == 1, (
            f"{service} must apply machinery step {step.name} in exactly one revision: "
            f"add a revision whose upgrade() calls apply(MACHINERY_{step.name[:4]})"
        )
        positions.append(chain.index(step_sql))
    assert positions == sorted(positions), f"{service} applies the machinery steps out of order"
