import pytest

from ingest.breakhis_names import (
    CLASSES,
    BreakHisNameError,
    parse_name,
    relative_path,
    resolve_magnifications,
    tumour_group,
)


def test_parse_real_names():
    n = parse_name("SOB_B_A-14-22549AB-40-001.png")
    assert (n.class_name, n.patient, n.magnification, n.seq, n.malignant) == ("adenosis", "14-22549AB", "40X", 1,
                                                                              False)
    n = parse_name("/x/y/SOB_M_DC-14-13412-400-027.png")
    assert (n.class_name, n.patient, n.magnification, n.seq, n.malignant) == ("ductal_carcinoma", "14-13412",
                                                                              "400X", 27, True)
    assert parse_name("SOB_B_PT-14-21998AB-100-005.png").class_name == "phyllodes_tumor"


@pytest.mark.parametrize("name, reason", [
    ("IMG_0001.png", "does not follow the BreakHis pattern"),
    ("SOB_B_XX-14-1234-40-001.png", "unknown tumour type code 'XX'"),
    ("SOB_M_A-14-1234-40-001.png", "contradicts tumour type"),
    ("SOB_B_A-14-1234-50-001.png", "magnification 50X"),
])
def test_parse_rejects_with_reason(name, reason):
    with pytest.raises(BreakHisNameError, match=reason):
        parse_name(name)


@pytest.mark.parametrize("cls", CLASSES)
def test_relative_path_round_trips(cls):
    path = relative_path(cls, "14-4659", "200X", 7)
    parsed = parse_name(path.name)
    assert (parsed.class_name, parsed.patient, parsed.magnification, parsed.seq) == (cls, "14-4659", "200X", 7)
    assert path.parts[:5] == ("BreaKHis_v1", "histology_slides", "breast", tumour_group(cls), "SOB")
    assert path.parts[5] == cls and path.parts[7] == "200X"


def test_resolve_magnifications():
    assert resolve_magnifications("mixed") == ("100X", "400X")
    assert resolve_magnifications(["400", "100x", "400X"]) == ("400X", "100X")
    assert resolve_magnifications(None) == ("40X", "100X", "200X", "400X")
    with pytest.raises(ValueError, match="unknown magnification"):
        resolve_magnifications("300X")
