"""Columns added, removed or retyped since the reference: findings by name, never a KeyError.

params.yaml can change between the run that trained the served model and today's monitor
run: a numeric column added, a text column dropped, a price read as text. The reference
rows then lack a column the batch has (or hold it as another type), and comparing them
column by column fails. Here the two schemas are compared first: each difference becomes a
finding (a Check with aspect "schema", always reported, so the run ends "Drift detected"
and, with `monitor.retrain_on_drift`, a retrain learns the new schema), and only the
columns both sides hold with the same role are compared statistically.

A column's role on the reference side is what the served model declared (its bundle's
params); with no model, it is read off the reference table (numeric columns are float64,
every other role text, so a change between text roles shows only with a model).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.config import ColumnsConfig, DataConfig
from tasks.modalities import raw_text_role
from tasks.monitor.checks import Check
from tasks.schema import PRESENT

SCHEMA = "schema"  # the aspect, test and effect of a schema finding


@dataclass(frozen=True)
class Schema:
    """What the monitor can compare, and what changed."""

    compared: DataConfig  # params.yaml's data with only the columns both sides hold alike
    findings: list[Check]  # one per changed column

    def holds(self, roles: dict[str, str]) -> bool:
        """Whether every column of `roles` (e.g. the model's) is compared with that role."""
        return roles.items() <= roles_of(self.compared.columns).items()


def roles_of(columns: ColumnsConfig) -> dict[str, str]:
    """column -> role, in declaration order."""
    return {column: role for role in ColumnsConfig.roles() for column in getattr(columns, role)}


def table_roles(table: pd.DataFrame, current: dict[str, str]) -> dict[str, str]:
    """The roles an aligned-like table shows: its columns with a presence mask, numeric or not.

    A non-numeric column takes today's role when today's role is not numeric either (a table
    cannot tell text from categorical), else the raw-text role (text's).
    """
    text = raw_text_role()
    roles = {}
    for name in table.columns:
        if name.startswith(PRESENT) and name[len(PRESENT) :] in table.columns:
            column = name[len(PRESENT) :]
            if _is_numeric(table[column]):
                roles[column] = "numeric"
            else:
                roles[column] = current.get(column, text) if current.get(column) != "numeric" else text
    return roles


def compare_schemas(
    before: dict[str, str],
    data: DataConfig,
    tables: dict[str, pd.DataFrame],
    since: str,
) -> Schema:
    """Today's declared columns (`data`) against `before`, and both against the tables' own columns.

    `tables` names each side ({"reference": ..., "batch": ...}): a column declared alike on
    both sides must still be in each table with its role's type, or it is a finding too.
    `since` ends each finding's sentence, e.g. "since the served model was trained".
    """
    after = roles_of(data.columns)
    findings: list[Check] = []
    kept: dict[str, list[str]] = {role: [] for role in ColumnsConfig.roles()}
    for column, role in after.items():
        if column not in before:
            findings.append(_finding(column, role, f"added {since}: not compared", tables))
        elif before[column] != role:
            detail = f"retyped {since} ({before[column]} -> {role}): not compared"
            findings.append(_finding(column, role, detail, tables))
        elif missing := [side for side, table in tables.items() if not _holds(table, column, role)]:
            detail = f"not in the {' or '.join(missing)} rows as a {role} column: not compared"
            findings.append(_finding(column, role, detail, tables))
        else:
            kept[role].append(column)
    for column, role in before.items():
        if column not in after:
            findings.append(_finding(column, role, f"removed {since}: not compared", tables))
    compared = data.model_copy(update={"columns": ColumnsConfig(**kept)})
    return Schema(compared, findings)


def _finding(column: str, role: str, detail: str, tables: dict[str, pd.DataFrame]) -> Check:
    """A change that needs no test: reported as drift, at its threshold (severity 1)."""
    rows = [len(table) for table in tables.values()] + [0, 0]
    return Check(
        column=column, role=role, aspect=SCHEMA, test=SCHEMA, statistic=0.0, p_value=0.0, p_adjusted=0.0,
        effect=SCHEMA, score=1.0, threshold=1.0, drifted=True, detail=detail,
        reference_rows=rows[0], batch_rows=rows[1],
    )  # fmt: skip


def _holds(table: pd.DataFrame, column: str, role: str) -> bool:
    """The table has the column, its presence mask, and the type its role is aligned as."""
    if column not in table.columns or PRESENT + column not in table.columns:
        return False
    return _is_numeric(table[column]) == (role == "numeric")


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
