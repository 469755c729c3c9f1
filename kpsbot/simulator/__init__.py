"""A local stand-in for Huawei Cloud KPS (SPEC §1): simulated projects served over loopback HTTP."""

from kpsbot.simulator.http import SimulatorServer, serve
from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler
from kpsbot.simulator.state import Simulator
from kpsbot.simulator.verify import AuthFailure, verify_request

__all__ = [
    "AuthFailure",
    "BackgroundHTTPServer",
    "QuietHandler",
    "Simulator",
    "SimulatorServer",
    "serve",
    "verify_request",
]
