"""A local stand-in for Huawei Cloud KPS and IAM's project look-up (SPEC §1), served over loopback HTTP."""

from kpsbot.simulator.http import SimulatorServer, serve, startup_line
from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler
from kpsbot.simulator.state import Simulator, derived_project_id
from kpsbot.simulator.verify import AuthFailure, Credentials, verify_request

__all__ = [
    "AuthFailure",
    "BackgroundHTTPServer",
    "Credentials",
    "QuietHandler",
    "Simulator",
    "SimulatorServer",
    "derived_project_id",
    "serve",
    "startup_line",
    "verify_request",
]
