//! The CRI ImageService over the image store (image/): pull, list, status, remove, and the
//! image filesystem figures. The store is synchronous (blocking I/O, its own locks): every
//! call runs on tokio's blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rsrun_image::{Credentials, ImageRecord, ImageStore, PullOptions};
use tonic::{Request, Response, Status};

use crate::api::{self, image_service_server::ImageService};
use crate::error::image_status;

pub struct Images {
    pub store: Arc<ImageStore>,
    pub gc: Arc<Collector>,
    /// A pull that receives nothing for this long fails (`image_pull_progress_timeout`).
    pub progress_timeout: Option<std::time::Duration>,
}

/// Frees the blobs and snapshots of removed images (`ImageStore::collect`) that RemoveImage
/// could not free before answering (a pull or rootfs creation held the store): on the
/// blocking pool, one sweep at a time, and one more if asked again meanwhile. The sweep takes
/// the store's exclusive lock, so it waits for those.
pub struct Collector {
    store: Arc<ImageStore>,
    running: AtomicBool,
    again: AtomicBool,
}

impl Collector {
    pub fn new(store: Arc<ImageStore>) -> Arc<Self> {
        Arc::new(Collector {
            store,
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
        })
    }

    /// Asks for a sweep (needs a tokio runtime).
    pub fn request(self: &Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return; // the running sweep sees `again` and goes round once more
        }
        let gc = self.clone();
        tokio::task::spawn_blocking(move || loop {
            gc.again.store(false, Ordering::SeqCst);
            match gc.store.collect() {
                Ok(st) if st.blobs_removed + st.snapshots_removed > 0 => tracing::info!(
                    blobs = st.blobs_removed,
                    snapshots = st.snapshots_removed,
                    bytes = st.bytes_freed,
                    "freed the storage of removed images"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("freeing the storage of removed images: {e}"),
            }
            gc.running.store(false, Ordering::SeqCst);
            if !gc.again.load(Ordering::SeqCst) || gc.running.swap(true, Ordering::SeqCst) {
                break;
            }
        });
    }
}

fn to_cri(r: &ImageRecord) -> api::Image {
    let (uid, username) = r.uid_or_username();
    api::Image {
        id: r.id.to_string(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: uid.map(|value| api::Int64Value { value }),
        username,
        spec: Some(api::ImageSpec {
            image: r.id.to_string(),
            ..Default::default()
        }),
        pinned: r.pinned,
    }
}

/// Sets its flag when dropped: with the future of a call that ends early.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The image a request names: `ImageSpec.image` must be set.
fn named(spec: Option<api::ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image).filter(|s| !s.is_empty()) {
        Some(i) => Ok(i),
        None => Err(Status::invalid_argument(format!(
            "{rpc}: image.image is required"
        ))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("image store task: {e}")))?
}

/// The pull's credentials from the CRI AuthConfig, read as containerd reads it (the image
/// store's `Credentials::from_cri`).
fn credentials(auth: Option<api::AuthConfig>) -> Result<Option<Credentials>, Status> {
    let Some(a) = auth else { return Ok(None) };
    Credentials::from_cri(
        &a.username,
        &a.password,
        &a.auth,
        &a.identity_token,
        &a.registry_token,
    )
    .map_err(|e| Status::invalid_argument(format!("PullImage: auth: {e}")))
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        // Inline, not on the blocking pool: one read of images.json (parsed again only when
        // it changed), which the hop to the pool and back would cost more than.
        let all = self.store.list().map_err(image_status)?;
        let images = match filter {
            None => all.iter().map(to_cri).collect(),
            Some(f) => {
                let want = self.store.get(&f).map_err(image_status)?;
                all.iter()
                    .filter(|r| want.as_ref().is_some_and(|w| w.id == r.id))
                    .map(to_cri)
                    .collect()
            }
        };
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    type StreamImagesStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<api::StreamImagesResponse, Status>>>;

    async fn stream_images(
        &self,
        req: Request<api::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = req.into_inner().filter;
        let list = self
            .list_images(Request::new(api::ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        // In batches, as the streaming list RPCs are meant to be read.
        let batches: Vec<_> = list
            .chunks(100)
            .map(|c| Ok(api::StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn image_status(
        &self,
        req: Request<api::ImageStatusRequest>,
    ) -> Result<Response<api::ImageStatusResponse>, Status> {
        let r = req.into_inner();
        let name = named(r.image, "ImageStatus")?;
        let store = self.store.clone();
        // A missing image is not an error: an empty answer (the kubelet pulls then). Inline
        // as ListImages; the verbose answer reads the config blob on the blocking pool.
        let Some(img) = store.get(&name).map_err(image_status)? else {
            return Ok(Response::new(api::ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            // As containerd's: the chain ID and the image's config (`crictl inspecti`
            // templates read `.info.imageSpec`). Removed meanwhile: an empty answer.
            let i = match blocking(move || Ok(store.inspect(&name))).await? {
                Ok(i) => i,
                Err(rsrun_image::Error::NotFound(_)) => {
                    return Ok(Response::new(api::ImageStatusResponse::default()))
                }
                Err(e) => return Err(image_status(e)),
            };
            let v = serde_json::json!({"chainID": i.chain_id(), "imageSpec": i.config});
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(api::ImageStatusResponse {
            image: Some(to_cri(&img)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<api::PullImageRequest>,
    ) -> Result<Response<api::PullImageResponse>, Status> {
        let r = req.into_inner();
        let name = named(r.image, "PullImage")?;
        // A call that ends before its pull (its deadline, or the client gone: the kubelet
        // cancels the pull of a pod being deleted) stops the download: the blocking pull
        // would run on otherwise, as containerd's does not.
        let cancelled = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let mut opts = PullOptions {
            credentials_server: r
                .auth
                .as_ref()
                .map(|a| a.server_address.clone())
                .filter(|a| !a.is_empty()),
            credentials: credentials(r.auth)?,
            progress_timeout: self.progress_timeout,
            ..Default::default()
        };
        opts.cancel.flag = Some(cancelled.0.clone());
        let store = self.store.clone();
        tracing::info!(image = %name, "pulling");
        let rec = blocking(move || store.pull(&name, &opts).map_err(image_status)).await?;
        Ok(Response::new(api::PullImageResponse {
            image_ref: rec.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<api::RemoveImageRequest>,
    ) -> Result<Response<api::RemoveImageResponse>, Status> {
        let name = named(req.into_inner().image, "RemoveImage")?;
        let store = self.store.clone();
        // The image with all its tags, by whichever name (containerd's); removing a missing
        // image succeeds (the CRI asks for idempotence).
        let removed = blocking(move || store.remove_image(&name).map_err(image_status)).await?;
        if removed {
            // Its blobs and layers go before the answer when nothing holds them (those a
            // container still uses stay), as containerd deletes synchronously: the kubelet's
            // image GC measures the disk again right after. With a pull or a rootfs
            // preparation in flight, after it, once the answer is sent.
            let store = self.store.clone();
            match blocking(move || store.try_collect().map_err(image_status)).await {
                Ok(Some(st)) => tracing::info!(
                    blobs = st.blobs_removed,
                    snapshots = st.snapshots_removed,
                    bytes = st.bytes_freed,
                    "freed the storage of removed images"
                ),
                Ok(None) => self.gc.request(),
                Err(e) => {
                    tracing::error!("freeing the storage of removed images: {}", e.message());
                    self.gc.request()
                }
            }
        }
        Ok(Response::new(api::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<api::ImageFsInfoRequest>,
    ) -> Result<Response<api::ImageFsInfoResponse>, Status> {
        let store = self.store.clone();
        blocking(move || {
            let usage = |u: rsrun_image::FsUsage| api::FilesystemUsage {
                timestamp: u.timestamp_ns,
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: u.mountpoint.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(api::UInt64Value {
                    value: u.used_bytes,
                }),
                inodes_used: Some(api::UInt64Value {
                    value: u.inodes_used,
                }),
            };
            let images = store.fs_info().map_err(image_status)?;
            let containers = store.container_fs_info().map_err(image_status)?;
            Ok(Response::new(api::ImageFsInfoResponse {
                image_filesystems: vec![usage(images)],
                container_filesystems: vec![usage(containers)],
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_as_containerd_reads_them() {
        let a = |u: &str, p: &str, auth: &str, id: &str, rt: &str| api::AuthConfig {
            username: u.into(),
            password: p.into(),
            auth: auth.into(),
            identity_token: id.into(),
            registry_token: rt.into(),
            ..Default::default()
        };
        let basic = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(credentials(None).unwrap(), None);
        // The kubelet's: user and password; a user name wins over the rest.
        assert_eq!(
            credentials(Some(a("u", "pw", "eDp5", "id", "rt"))).unwrap(),
            basic("u", "pw")
        );
        assert_eq!(
            credentials(Some(a("", "", "dXNlcjpwdw==", "id", ""))).unwrap(),
            Some(Credentials::IdentityToken("id".into()))
        );
        assert_eq!(
            credentials(Some(a("", "", "dXNlcjpwdw==", "", "rt"))).unwrap(),
            basic("user", "pw")
        );
        assert_eq!(
            credentials(Some(a("", "", "", "", "rt"))).unwrap(),
            Some(Credentials::RegistryToken("rt".into()))
        );
        let e = credentials(Some(a("", "", "*", "", ""))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("auth"), "{}", e.message());
    }
}
