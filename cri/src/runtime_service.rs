//! The CRI RuntimeService. This slice answers what the kubelet asks of a runtime before any
//! pod exists (Version, Status, RuntimeConfig, UpdateRuntimeConfig); the pod sandbox and
//! container RPCs are not built yet and answer UNIMPLEMENTED naming the RPC (docs/cri.md).

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{self, runtime_service_server::RuntimeService};

/// What the kubelet requires in VersionResponse.version.
pub const KUBELET_API_VERSION: &str = "0.1.0";
pub const RUNTIME_NAME: &str = "rsrun";
pub const CRI_API_VERSION: &str = "v1";

pub struct Runtime {
    /// The network is ready once the kubelet has given the pod CIDR (UpdateRuntimeConfig)
    /// or a CNI configuration exists; in this slice there is no CNI: not ready.
    pub pod_cidr: tokio::sync::RwLock<String>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn not_built<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc}: not implemented by rsrun-cri yet (docs/cri.md lists what is)"
    )))
}

/// The not-yet-built RPCs, written in the shape #[async_trait] gives the others (the
/// attribute does not see inside a macro).
type Answer<'a, T> =
    Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

macro_rules! not_built {
    ($($name:ident($req:ident) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _r: Request<api::$req>,
            ) -> Answer<'async_trait, $resp>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { not_built(stringify!($req).trim_end_matches("Request")) })
            }
        )*
    };
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _r: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        Ok(Response::new(api::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        _r: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let conditions = vec![
            api::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: "rsrun-cri: pod networking (CNI) is not built yet".into(),
            },
        ];
        Ok(Response::new(api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions }),
            info: Default::default(),
            runtime_handlers: vec![api::RuntimeHandler {
                name: String::new(),
                features: Some(api::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(api::RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<api::RuntimeConfigRequest>,
    ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
        Ok(Response::new(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: api::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<api::UpdateRuntimeConfigResponse>, Status> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            tracing::info!(pod_cidr = %cidr, "pod CIDR from the kubelet");
            *self.pod_cidr.write().await = cidr;
        }
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    not_built! {
        run_pod_sandbox(RunPodSandboxRequest) -> api::RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> api::StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> api::RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> api::PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> api::ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> api::CreateContainerResponse;
        start_container(StartContainerRequest) -> api::StartContainerResponse;
        stop_container(StopContainerRequest) -> api::StopContainerResponse;
        remove_container(RemoveContainerRequest) -> api::RemoveContainerResponse;
        list_containers(ListContainersRequest) -> api::ListContainersResponse;
        container_status(ContainerStatusRequest) -> api::ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> api::UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> api::ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> api::ExecSyncResponse;
        exec(ExecRequest) -> api::ExecResponse;
        attach(AttachRequest) -> api::AttachResponse;
        port_forward(PortForwardRequest) -> api::PortForwardResponse;
        container_stats(ContainerStatsRequest) -> api::ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> api::ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> api::PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> api::ListPodSandboxStatsResponse;
        checkpoint_container(CheckpointContainerRequest) -> api::CheckpointContainerResponse;
        checkpoint_pod(CheckpointPodRequest) -> api::CheckpointPodResponse;
        restore_pod(RestorePodRequest) -> api::RestorePodResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> api::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> api::ListPodSandboxMetricsResponse;
        update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> api::UpdatePodSandboxResourcesResponse;
    }

    type StreamPodSandboxesStream = Streamed<api::StreamPodSandboxesResponse>;
    type StreamContainersStream = Streamed<api::StreamContainersResponse>;
    type StreamContainerStatsStream = Streamed<api::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Streamed<api::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Streamed<api::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = Streamed<api::StreamPodSandboxMetricsResponse>;

    not_built! {
        stream_pod_sandboxes(StreamPodSandboxesRequest) -> Self::StreamPodSandboxesStream;
        stream_containers(StreamContainersRequest) -> Self::StreamContainersStream;
        stream_container_stats(StreamContainerStatsRequest) -> Self::StreamContainerStatsStream;
        stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> Self::StreamPodSandboxStatsStream;
        get_container_events(GetEventsRequest) -> Self::GetContainerEventsStream;
        stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> Self::StreamPodSandboxMetricsStream;
    }
}
