"""The lattice and delta laws, through the public kit, for every built-in type."""

from crdts.testing import LatticeLaws
from tests.strategies import SPECS


class TestGCounterLaws(LatticeLaws):
    spec = SPECS["GCounter"]


class TestPNCounterLaws(LatticeLaws):
    spec = SPECS["PNCounter"]


class TestORSetLaws(LatticeLaws):
    spec = SPECS["ORSet"]


class TestLWWRegisterLaws(LatticeLaws):
    spec = SPECS["LWWRegister"]


class TestMVRegisterLaws(LatticeLaws):
    spec = SPECS["MVRegister"]


class TestVectorClockLaws(LatticeLaws):
    spec = SPECS["VectorClock"]


class TestORMapLaws(LatticeLaws):
    spec = SPECS["ORMap"]
