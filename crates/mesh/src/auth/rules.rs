//! The authorization table: who may call each RPC of the mesh, its rate-limit class and
//! whether it is audited. A method that is not in the table is refused before anything
//! else runs, and its path never becomes a metric label or a span name (it is `unknown`).

use std::{collections::HashMap, sync::LazyLock};

use crate::ratelimit::Class;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone holding a mesh certificate (health, reflection, and the RPCs that carry
    /// their own credentials: Login, Refresh, GetJwks).
    Public,
    /// A person (user or admin) or a mesh service.
    Authenticated,
    /// A person (user or admin).
    User,
    /// An admin.
    Admin,
    /// Only these mesh services, by certificate.
    Services(&'static [&'static str]),
}

/// One row of the authorization table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Who may call.
    pub access: Access,
    /// Rate-limit class, if limited here (Login is limited by the auth service itself,
    /// per username and peer, since the username is in the body).
    pub class: Option<Class>,
    /// Written to the audit log.
    pub audit: bool,
}

const fn rule(access: Access, class: Option<Class>, audit: bool) -> Rule {
    Rule { access, class, audit }
}

const READ: Option<Class> = Some(Class::Read);
const WRITE: Option<Class> = Some(Class::Write);
const SUBMIT: Option<Class> = Some(Class::Submit);

/// The authorization table: every RPC of every server in the mesh. A method that is not
/// here is refused. (A test walks the descriptor sets and fails on any RPC without a row.)
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", rule(Access::Public, None, false)),
    ("/grpc.health.v1.Health/Watch", rule(Access::Public, None, false)),
    // Reflection describes the API (public in the repository anyway) and is what grpcurl
    // needs before any call, health checks included: open to every mesh certificate.
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", rule(Access::Public, None, false)),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", rule(Access::Public, None, false)),
    ("/sakuga.v1.AuthService/Login", rule(Access::Public, None, true)),
    ("/sakuga.v1.AuthService/Refresh", rule(Access::Public, None, true)),
    ("/sakuga.v1.AuthService/GetJwks", rule(Access::Public, None, false)),
    ("/sakuga.v1.AuthService/Logout", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/WhoAmI", rule(Access::Authenticated, READ, false)),
    ("/sakuga.v1.AuthService/CreateUser", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/ListUsers", rule(Access::Admin, READ, false)),
    ("/sakuga.v1.AuthService/SetUserRole", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/SetUserDisabled", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/CreateApiKey", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/ListApiKeys", rule(Access::User, READ, false)),
    ("/sakuga.v1.AuthService/RevokeApiKey", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/ListAuditEvents", rule(Access::Admin, READ, false)),
    ("/sakuga.v1.JobService/SubmitJob", rule(Access::User, SUBMIT, true)),
    ("/sakuga.v1.JobService/GetJob", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/ListJobs", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/WatchJob", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/CancelJob", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.JobService/RetryJob", rule(Access::User, SUBMIT, true)),
    ("/sakuga.v1.ProjectService/CreateProject", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/GetProject", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/ListProjects", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/UpdateProject", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/CreateCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/ListCharacters", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/UpdateCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/DeleteCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WebhookService/CreateWebhook", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WebhookService/GetWebhook", rule(Access::User, READ, false)),
    ("/sakuga.v1.WebhookService/ListWebhooks", rule(Access::User, READ, false)),
    ("/sakuga.v1.WebhookService/UpdateWebhook", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WebhookService/DeleteWebhook", rule(Access::User, WRITE, true)),
    // Makes an outgoing request on the caller's behalf: audited, and limited as a write.
    ("/sakuga.v1.WebhookService/TestWebhook", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WebhookService/RotateWebhookSecret", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WebhookService/ListDeliveries", rule(Access::User, READ, false)),
    ("/sakuga.v1.WebhookService/RedeliverWebhook", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WorkerService/Attach", rule(Access::Services(&["generator"]), None, false)),
    ("/sakuga.v1.FileService/StoreArtifact", rule(Access::Services(&["generator"]), None, true)),
    ("/sakuga.v1.FileService/GetFile", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/ListFiles", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/ReadFile", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/GetThumbnail", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/DeleteFile", rule(Access::User, WRITE, true)),
    // A read, but audited: the URL it hands out reads the bytes without a token.
    ("/sakuga.v1.FileService/GetDownloadUrl", rule(Access::User, READ, true)),
];

/// One row of the table as the guard uses it: the rule and the method's name
/// (`JobService.SubmitJob`), which labels metrics and names spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// `Service.Method` (package dropped).
    pub name: String,
    /// The rule.
    pub rule: Rule,
}

/// The label and span name of a path that is not in the table.
pub const UNKNOWN_METHOD: &str = "unknown";

static TABLE: LazyLock<HashMap<&'static str, Method>> = LazyLock::new(|| {
    RULES.iter().map(|(path, rule)| (*path, Method { name: action_of(path), rule: *rule })).collect()
});

/// The rule of a method path (`/package.Service/Method`).
pub fn rule_for(path: &str) -> Option<Rule> {
    method(path).map(|m| m.rule)
}

/// The table row of a method path; `None` for any path not in the table.
pub fn method(path: &str) -> Option<&'static Method> {
    TABLE.get(path)
}

/// `Service.Method` of a path.
pub(crate) fn action_of(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}.{method}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_server_has_a_rule() {
        use prost::Message as _;
        let mut missing = Vec::new();
        let sets = [
            sakuga_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut seen = 0;
        for bytes in sets {
            let fds = prost_types::FileDescriptorSet::decode(bytes).unwrap();
            for file in fds.file {
                for service in &file.service {
                    for method in &service.method {
                        let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        seen += 1;
                        if rule_for(&path).is_none() {
                            missing.push(path);
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
        assert_eq!(seen, RULES.len(), "every rule names an existing RPC");
    }

    #[test]
    fn only_generators_may_attach_or_store() {
        for (path, rule) in RULES {
            let generator_only = matches!(rule.access, Access::Services(s) if s == ["generator"]);
            let expected =
                *path == "/sakuga.v1.WorkerService/Attach" || *path == "/sakuga.v1.FileService/StoreArtifact";
            assert_eq!(generator_only, expected, "{path}");
        }
    }

    #[test]
    fn method_names_come_from_the_table_only() {
        assert_eq!(
            method("/sakuga.v1.JobService/SubmitJob").map(|m| m.name.as_str()),
            Some("JobService.SubmitJob")
        );
        assert_eq!(method("/evil.Probe/m1"), None);
        assert_eq!(method("/sakuga.v1.JobService/SubmitJob/"), None);
    }
}
