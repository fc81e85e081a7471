//! Every route of the receiver, defined once: method, path, who may call it, and for the API's
//! calls the body and answer types. The receiver's router mounts these routes and decides the
//! caller from them; the agents' client calls them by the same definitions. Renaming a route or
//! changing a body type therefore changes both ends at once, or fails to compile on the end
//! that was not changed. `docs/api.md`'s endpoint table is checked against [`ROUTES`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::API_PREFIX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// Who holds the token of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// No token needed.
    Anyone,
    /// The receiver's admin token.
    Admin,
    /// The read-only viewer token: reads jobs and logs, changes nothing.
    Viewer,
    /// A job's agent token: the source sending that job's disks.
    Agent,
    /// A job's target token: the machine receiving that job's disks.
    Target,
    /// An enrollment token: a source asking for its job.
    Enrollment,
}

/// One route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// The path as the router matches it (`{job}` parameters), under [`API_PREFIX`] when
    /// `api` is set.
    pub path: &'static str,
    pub callers: &'static [Caller],
    pub api: bool,
}

impl Route {
    /// The path a client asks for: `{…}` parameters filled with `args`, in order.
    pub fn fill(&self, args: &[&str]) -> String {
        let mut out = String::new();
        let mut args = args.iter();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map(|c| open + c).expect("a route's parameter is closed");
            out.push_str(args.next().expect("a value for every parameter of the route"));
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        debug_assert!(args.next().is_none(), "more values than parameters for {}", self.path);
        out
    }

    /// The path as documented: with the API prefix.
    pub fn full_path(&self) -> String {
        if self.api {
            format!("{API_PREFIX}{}", self.path)
        } else {
            self.path.to_string()
        }
    }

    /// Whether the path names a job (and so the caller is decided against that job's tokens).
    pub fn per_job(&self) -> bool {
        self.path.starts_with("/jobs/{job}")
    }
}

/// A body that is not JSON (a chunk's bytes, a console transcript).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Raw;

/// A call of the API: its route, and the types of its body and its answer.
pub trait Call {
    const ROUTE: Route;
    type Body: Serialize + DeserializeOwned;
    type Answer: Serialize + DeserializeOwned;
}

macro_rules! calls {
    ($( $(#[$doc:meta])* $name:ident: $method:ident $path:literal [$($caller:ident),*] $body:ty => $answer:ty; )*) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Call for $name {
                const ROUTE: Route =
                    Route { method: Method::$method, path: $path, callers: &[$(Caller::$caller),*], api: true };
                type Body = $body;
                type Answer = $answer;
            }
        )*
        /// The API's routes, in the order `docs/api.md` lists them.
        pub const API_ROUTES: &[Route] = &[ $( $name::ROUTE, )* ];
    };
}

/// The calls, by name.
pub mod call {
    use super::*;
    use crate::wire::{self, Job};

    calls! {
        Health: Get "/health" [Anyone] () => serde_json::Value;
        CreateJob: Post "/jobs" [Admin] wire::CreateJob => Job;
        ListJobs: Get "/jobs" [Admin, Viewer] () => Vec<Job>;
        ShowJob: Get "/jobs/{job}" [Admin, Viewer, Agent, Target] () => Job;
        GetLog: Get "/jobs/{job}/log" [Admin, Viewer] () => Vec<wire::LogEntry>;
        /// What an auditor checks the migrated disks against.
        Receipt: Get "/jobs/{job}/receipt" [Admin, Viewer] () => wire::Receipt;
        /// Every wave's summary: machines by state, bytes to go, rate and ETA, failures first.
        ListWaves: Get "/waves" [Admin, Viewer] () => Vec<wire::WaveSummary>;
        /// The live image's console transcript (text); `?boot=ID&seq=N` says which boot.
        PostLog: Post "/jobs/{job}/log" [Agent, Target] Raw => ();
        WhoAmI: Get "/whoami" [Admin, Viewer] () => serde_json::Value;
        RestartJob: Post "/jobs/{job}/restart" [Admin] () => Job;
        RotateTokens: Post "/jobs/{job}/tokens" [Admin] wire::TokenRequest => wire::NewTokens;
        CancelJob: Post "/jobs/{job}/cancel" [Admin] () => Job;
        SetTarget: Post "/jobs/{job}/target" [Admin] wire::TargetSpec => Job;
        CreateEnrollment: Post "/enrollments" [Admin] wire::CreateEnrollment => wire::Enrollment;
        ListEnrollments: Get "/enrollments" [Admin, Viewer] () => Vec<wire::Enrollment>;
        RevokeEnrollment: Post "/enrollments/{id}/revoke" [Admin] () => wire::Enrollment;
        Enroll: Post "/enroll" [Enrollment] wire::EnrollRequest => wire::EnrollAnswer;
        Register: Post "/jobs/{job}/register" [Agent] wire::Register => wire::Registered;
        BeginDisk: Post "/jobs/{job}/disks/{disk}/begin" [Agent] wire::BeginDisk => ();
        Missing: Post "/jobs/{job}/disks/{disk}/missing" [Agent] wire::MissingQuery => wire::MissingAnswer;
        /// A chunk's bytes (raw, or zstd with `Content-Encoding: zstd`), its id in a header.
        PutChunk: Put "/jobs/{job}/disks/{disk}/chunks/{index}" [Agent] Raw => ();
        Progress: Post "/jobs/{job}/disks/{disk}/progress" [Agent] wire::ProgressReport => ();
        /// One page of a large disk's chunk ids, before its paged manifest.
        PutPage: Put "/jobs/{job}/disks/{disk}/pages/{page}" [Agent] wire::ManifestPage => ();
        CompleteDisk: Post "/jobs/{job}/disks/{disk}/complete" [Agent] wire::Manifest => wire::DiskVerdict;
        Finish: Post "/jobs/{job}/finish" [Agent] () => Job;
        Fail: Post "/jobs/{job}/fail" [Agent] wire::Failure => ();
        TargetRegister: Post "/jobs/{job}/target/register" [Target] wire::TargetRegister => wire::TargetPlan;
        TargetBegin: Post "/jobs/{job}/target/begin" [Target] wire::TargetBegin => ();
        TargetProgress: Post "/jobs/{job}/target/progress" [Target] wire::TargetProgress => ();
        TargetFinish: Post "/jobs/{job}/target/finish" [Target] wire::TargetDone => Job;
        TargetFail: Post "/jobs/{job}/target/fail" [Target] wire::Failure => ();
        Manifest: Get "/jobs/{job}/disks/{disk}/manifest" [Target, Admin] () => wire::Manifest;
        /// A page of a verified paged manifest's chunk ids.
        GetPage: Get "/jobs/{job}/disks/{disk}/pages/{page}" [Target, Admin] () => wire::ManifestPage;
        /// A stored chunk's bytes, its id in a header.
        ChunkData: Get "/jobs/{job}/disks/{disk}/chunks/{index}/data" [Target, Admin] () => Raw;
    }
}

/// The boot files (plain HTTP too), outside the API.
pub const BOOT_FILE: Route =
    Route { method: Method::Get, path: "/boot/{*file}", callers: &[Caller::Anyone], api: false };
/// Prometheus metrics.
pub const METRICS: Route = Route { method: Method::Get, path: "/metrics", callers: &[Caller::Anyone], api: false };
/// The dashboard page (it signs in with the admin or viewer token itself).
pub const DASHBOARD: Route = Route { method: Method::Get, path: "/", callers: &[Caller::Anyone], api: false };

/// Every route the receiver answers, API first.
pub fn all_routes() -> Vec<Route> {
    call::API_ROUTES.iter().copied().chain([BOOT_FILE, METRICS, DASHBOARD]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_parameters_in_order() {
        use call::*;
        assert_eq!(PutChunk::ROUTE.fill(&["j1", "0", "7"]), "/jobs/j1/disks/0/chunks/7");
        assert_eq!(ListJobs::ROUTE.fill(&[]), "/jobs");
        assert_eq!(ShowJob::ROUTE.full_path(), "/api/v1/jobs/{job}");
        assert!(ShowJob::ROUTE.per_job() && !ListJobs::ROUTE.per_job() && !call::Enroll::ROUTE.per_job());
        assert_eq!(BOOT_FILE.full_path(), "/boot/{*file}");
    }

    /// `docs/api.md`'s endpoint table lists exactly these routes, with their callers.
    #[test]
    fn the_api_document_lists_exactly_these_routes() {
        let doc = include_str!("../../docs/api.md");
        let table = &doc[doc.find("## Endpoints").expect("an Endpoints section")..];
        let mut documented = vec![];
        for row in table.lines().skip_while(|l| !l.starts_with("| method")).skip(2) {
            if !row.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let path = cells[2].split('`').nth(1).expect("a path in backticks");
            documented.push((cells[1].to_string(), path.replace("{file}", "{*file}"), cells[3].to_string()));
        }
        let routes = all_routes();
        for r in &routes {
            let Some((_, _, who)) = documented.iter().find(|(m, p, _)| m == r.method.as_str() && *p == r.full_path())
            else {
                panic!("docs/api.md does not list {} {}", r.method.as_str(), r.full_path());
            };
            // The caller column names every caller the route admits.
            for c in r.callers {
                let word = match c {
                    Caller::Anyone => "anyone",
                    Caller::Admin => "admin",
                    Caller::Viewer => "viewer",
                    Caller::Agent => "agent",
                    Caller::Target => "target",
                    Caller::Enrollment => "enrollment token",
                };
                assert!(
                    who.contains(word),
                    "{} {}: the document says {who:?}, the route admits {c:?}",
                    r.method.as_str(),
                    r.full_path()
                );
            }
        }
        for (m, p, _) in &documented {
            assert!(
                routes.iter().any(|r| r.method.as_str() == m && r.full_path() == *p),
                "docs/api.md lists {m} {p}, which is not a route"
            );
        }
        assert_eq!(documented.len(), routes.len());
    }
}
