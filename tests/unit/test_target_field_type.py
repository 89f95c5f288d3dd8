"""The payload index the target gets is the type the source reports.

Qdrant reports an index as PayloadSchemaType (collections.proto) and creates one from FieldType (points.proto);
the two enums are numbered one apart (PayloadSchemaType.Keyword == 1 == FieldType.FieldTypeInteger), so passing
one for the other silently made a keyword index an integer index on the target.
"""

from __future__ import annotations

import pytest
from qdrant_client import grpc as pb

from engine.errors import PreconditionError
from engine.migration.target import _field_type

REPORTED = [v for v in pb.PayloadSchemaType.values() if v != pb.PayloadSchemaType.UnknownType]


@pytest.mark.parametrize("schema_type", REPORTED, ids=[pb.PayloadSchemaType.Name(v) for v in REPORTED])
def test_every_reported_index_type_is_recreated_as_itself(schema_type):
    created = _field_type("f", schema_type)
    assert pb.FieldType.Name(created) == "FieldType" + pb.PayloadSchemaType.Name(schema_type)


def test_the_enums_really_are_numbered_apart():
    # Guards the test above from passing vacuously if the two enums ever line up.
    assert pb.PayloadSchemaType.Keyword != pb.FieldType.FieldTypeKeyword


def test_an_unknown_index_type_is_refused_with_the_fix():
    with pytest.raises(PreconditionError, match="'f'.*create it on the target yourself"):
        _field_type("f", pb.PayloadSchemaType.UnknownType)
