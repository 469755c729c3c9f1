"""The official Huawei Cloud SDK (huaweicloudsdkkps) against the simulator."""

import pytest
from simkit import AK, PROJECT, SK


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
