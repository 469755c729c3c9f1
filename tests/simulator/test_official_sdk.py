"""The official Huawei Cloud SDK (huaweicloudsdkkps) against the simulator."""

import pytest
from simkit import AK, PROJECT, SK

from kpsbot.simulator import Simulator, SimulatorServer


@pytest.fixture
def sdk_project_cache(monkeypatch):
    """The SDK caches looked-up project IDs process-wide (per AK and region): each test starts with none."""
    from huaweicloudsdkcore.auth.credentials import Credentials

    cache: dict = {}
    monkeypatch.setattr(Credentials, "_CACHE", cache)
    monkeypatch.delenv("HUAWEICLOUD_SDK_IAM_ENDPOINT", raising=False)
    return cache


def sdk_client_without_project_id(url, region="cn-north-4", sk=SK):
    """The official KPS client as its samples build it from AK/SK alone: the project ID comes from IAM."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkcore.region.region import Region
    from huaweicloudsdkkps.v3 import KpsClient as SdkKpsClient

    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    credentials = BasicCredentials(AK, sk).with_iam_endpoint(url)
    client = (
        SdkKpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_region(Region(region, url))
        .build()
    )
    return client, credentials


def test_official_sdk_can_call_the_simulator(sim, server):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkkps.v3 import (
        KpsClient as SdkKpsClient,
    )
    from huaweicloudsdkkps.v3 import (
        ListFailedTaskRequest,
        ListKeypairTaskRequest,
        ListRunningTaskRequest,
    )

    for index in range(5):
        sim.add_task(task_id=f"t{index}", task_time_ms=1_000 + index)
    sim.finish_task("t0", success=False, error_code="KPS.2003", error_msg="server is not running")

    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    sdk = (
        SdkKpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, SK, PROJECT))
        .with_endpoints([server.url])
        .build()
    )

    running = sdk.list_running_task(ListRunningTaskRequest(limit=2, offset=1))
    assert running.total == 4
    assert [t.task_id for t in running.tasks] == ["t2", "t3"]
    assert running.tasks[0].operate_type == "RUNNING_RESET"

    failed = sdk.list_failed_task(ListFailedTaskRequest())
    assert [(t.task_id, t.task_error_code) for t in failed.tasks] == [("t0", "KPS.2003")]

    status = sdk.list_keypair_task(ListKeypairTaskRequest(task_id="t0"))
    assert (status.task_id, status.task_status) == ("t0", "FAILED_RESET")

    bad = (
        SdkKpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, "wrong-secret", PROJECT))
        .with_endpoints([server.url])
        .build()
    )
    with pytest.raises(ClientRequestException) as caught:
        bad.list_running_task(ListRunningTaskRequest())
    assert (caught.value.status_code, caught.value.error_code) == (401, "APIGW.0301")


def test_official_sdk_finds_the_project_id_through_the_simulators_iam(sdk_project_cache):
    from huaweicloudsdkkps.v3 import ListRunningTaskRequest

    north = Simulator(name="cn-north-4", ak=AK, sk=SK, seed=1)
    dev = Simulator(name="cn-north-4_dev", ak=AK, sk=SK, seed=2)
    singapore = Simulator(name="ap-southeast-1", ak=AK, sk=SK, seed=3)
    for sim in (north, dev, singapore):
        sim.add_task(task_id=f"{sim.name}-task")
    with SimulatorServer([north, dev, singapore]) as server:
        sdk, credentials = sdk_client_without_project_id(server.url)
        assert server.iam_requests == 1  # the look-up happens when the client is built
        assert credentials.project_id == north.project_id
        assert sdk_project_cache == {AK + "cn-north-4": north.project_id}
        running = sdk.list_running_task(ListRunningTaskRequest())
    assert [t.task_id for t in running.tasks] == ["cn-north-4-task"]
    assert list(north.request_log) == [("GET", f"/v3/{north.project_id}/running-tasks")]
    assert dev.requests == singapore.requests == 0


def test_official_sdk_project_discovery_fails_on_iam_errors_and_unknown_regions(sdk_project_cache):
    from huaweicloudsdkcore.exceptions.exceptions import SdkException

    with SimulatorServer(Simulator(name="cn-north-4", ak=AK, sk=SK)) as server:
        server.iam_fail_next(1, status=503)
        with pytest.raises(SdkException, match="Failed to get project id of region 'cn-north-4'"):
            sdk_client_without_project_id(server.url)
        with pytest.raises(SdkException, match="Failed to get project id of region 'cn-east-3'"):
            sdk_client_without_project_id(server.url, region="cn-east-3")
        with pytest.raises(SdkException, match="Failed to get project id"):
            sdk_client_without_project_id(server.url, sk="wrong-secret")
        assert server.iam_requests == 3
        assert sdk_project_cache == {}
