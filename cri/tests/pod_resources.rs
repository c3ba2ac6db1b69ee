//! UpdatePodSandboxResources through the built rsrun-cri: the pod-level resources and
//! overhead of RunPodSandbox, then of each update (what an update leaves out stays), in the
//! verbose PodSandboxStatus, across a restart of the server; a missing pod is NotFound.

use rsrun_cri::api;

mod common;

fn info(r: &api::PodSandboxStatusResponse) -> serde_json::Value {
    serde_json::from_str(r.info.get("info").expect("verbose info")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resources_are_recorded_and_updated() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (pod namespaces)");
        return;
    }
    let mut srv = common::start("podres").await;
    let mut c = common::client(&srv.sock).await;
    let mut config = common::host_pod("podres");
    let linux = config.linux.as_mut().unwrap();
    linux.resources = Some(api::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let pod = c
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let status = |c: &mut common::Client, pod: &str| {
        let mut c = c.clone();
        let pod = pod.to_string();
        async move {
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod,
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let v = info(&status(&mut c, &pod).await);
    assert_eq!(v["resources"]["memory"]["limit"], 64 << 20, "{v}");
    assert_eq!(v["resources"]["cpu"]["shares"], 512, "{v}");
    assert!(v["overhead"].is_null(), "{v}");

    c.update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 8 << 20,
            ..Default::default()
        }),
        resources: Some(api::LinuxContainerResources {
            cpu_shares: 1024,
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    // An update with only the overhead keeps the resources.
    c.update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        resources: None,
    })
    .await
    .unwrap();
    let check = |v: &serde_json::Value| {
        assert_eq!(v["resources"]["memory"]["limit"], 128 << 20, "{v}");
        assert_eq!(v["resources"]["cpu"]["shares"], 1024, "{v}");
        assert_eq!(v["overhead"]["memory"]["limit"], 16 << 20, "{v}");
    };
    check(&info(&status(&mut c, &pod).await));

    // The record survives the server.
    srv.restart().await;
    let mut c = common::client(&srv.sock).await;
    check(&info(&status(&mut c, &pod).await));

    let e = c
        .update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "no-such-pod".into(),
            overhead: None,
            resources: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("no-such-pod"), "{e:?}");

    c.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}
