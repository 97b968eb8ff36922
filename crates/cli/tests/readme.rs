//! Every ```sh block of the README, checked against what it names: each `sakuga …` line
//! parses with the command's own clap definition, each `make X` names a target of the
//! Makefile, and the grpcurl tour is well-formed against the API: its services, methods and
//! messages exist in `sakuga_proto::FILE_DESCRIPTOR_SET` and are served on the port it
//! calls, every `-d` body is JSON whose keys are fields of the method's request, and the
//! python one-liner reads the keys grpcurl really prints (the proto's JSON names, e.g.
//! `accessToken`).
//!
//! The blocks are not run against a live stack here: `make up` binds fixed ports for the
//! whole machine, which the test suite (parallel, one database and OpenBao per test) must
//! not. `make e2e` and `make demo` run the same calls against the running stack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use clap::Parser as _;
use prost::Message as _;
use prost_types::{DescriptorProto, FieldDescriptorProto, field_descriptor_proto::Type};
use sakuga_cli::Cli;

const README: &str = include_str!("../../../README.md");
const MAKEFILE: &str = include_str!("../../../Makefile");

/// The bodies of the README's ```sh blocks.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A shell token: a word (quotes removed) or an operator (`|`, `<`, `>`, `$(`, `)`, `;`,
/// `&&`, or a line end that ends a command).
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Op(&'static str),
}

/// Splits shell text into tokens: quotes, backslash escapes, line continuations and
/// comments as `sh` reads them (enough for the README; no expansion).
fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars().peekable();
    let end_word = |word: &mut Option<String>, out: &mut Vec<Token>| {
        if let Some(w) = word.take() {
            out.push(Token::Word(w));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(n) => word.get_or_insert_with(String::new).push(n),
            },
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for n in chars.by_ref() {
                    if n == '\'' {
                        break;
                    }
                    w.push(n);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(n) = chars.next() {
                    match n {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        n => w.push(n),
                    }
                }
            }
            '#' if word.is_none() => while chars.next_if(|n| *n != '\n').is_some() {},
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                end_word(&mut word, &mut out);
                out.push(Token::Op("$("));
            }
            '|' | '<' | '>' | ')' | ';' | '\n' => {
                end_word(&mut word, &mut out);
                out.push(Token::Op(match c {
                    '|' => "|",
                    '<' => "<",
                    '>' => ">",
                    ')' => ")",
                    _ => ";",
                }));
            }
            c if c.is_whitespace() => end_word(&mut word, &mut out),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut word, &mut out);
    out
}

/// The simple commands of a block, each with the command before it in its pipeline (a
/// command after `|` reads what the one before printed).
fn commands(block: &str) -> Vec<(Vec<String>, Option<Vec<String>>)> {
    let mut out: Vec<(Vec<String>, Option<Vec<String>>)> = Vec::new();
    let (mut words, mut previous, mut skip_redirect) = (Vec::new(), None, false);
    let mut toks = tokens(block);
    // A pipe at a line's end continues the pipeline on the next line.
    toks.dedup_by(|b, a| *a == Token::Op("|") && *b == Token::Op(";"));
    for t in toks {
        match t {
            Token::Word(_) if skip_redirect => skip_redirect = false,
            Token::Word(w) => words.push(w),
            Token::Op(op) => {
                if !words.is_empty() {
                    let cmd = std::mem::take(&mut words);
                    out.push((cmd.clone(), previous.take()));
                    if op == "|" {
                        previous = Some(cmd);
                    }
                }
                skip_redirect = matches!(op, "<" | ">");
            }
        }
    }
    if !words.is_empty() {
        out.push((words, previous));
    }
    out
}

/// The API, by full name.
struct Api {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, Vec<String>>,
    /// `sakuga.v1.Service/Method` → (request, response) type names.
    methods: HashMap<String, (String, String)>,
}

impl Api {
    fn load() -> Self {
        let set = prost_types::FileDescriptorSet::decode(sakuga_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut api = Self { messages: HashMap::new(), enums: HashMap::new(), methods: HashMap::new() };
        for file in set.file {
            let package = file.package().to_owned();
            for s in &file.service {
                for m in &s.method {
                    let types = (trim_dot(m.input_type()), trim_dot(m.output_type()));
                    api.methods.insert(format!("{package}.{}/{}", s.name(), m.name()), types);
                }
            }
            for e in &file.enum_type {
                let values = e.value.iter().map(|v| v.name().to_owned()).collect();
                api.enums.insert(format!("{package}.{}", e.name()), values);
            }
            for m in file.message_type {
                api.add_message(&package, m);
            }
        }
        api
    }

    fn add_message(&mut self, scope: &str, m: DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        for e in &m.enum_type {
            let values = e.value.iter().map(|v| v.name().to_owned()).collect();
            self.enums.insert(format!("{name}.{}", e.name()), values);
        }
        for nested in m.nested_type.clone() {
            self.add_message(&name, nested);
        }
        self.messages.insert(name, m);
    }

    fn message(&self, name: &str) -> &DescriptorProto {
        self.messages.get(name).unwrap_or_else(|| panic!("no message {name} in the API"))
    }

    /// Checks that `json` (as grpcurl reads it: proto or JSON names) is a `message`.
    fn check_body(&self, message: &str, json: &serde_json::Value, context: &str) {
        let object = json.as_object().unwrap_or_else(|| panic!("{context}: {json} is not a JSON object"));
        let fields = &self.message(message).field;
        for (key, value) in object {
            let field = fields
                .iter()
                .find(|f| f.name() == key || json_name(f) == *key)
                .unwrap_or_else(|| panic!("{context}: {message} has no field {key:?}"));
            match field.r#type() {
                Type::Message if !field.type_name().starts_with(".google.") => {
                    self.check_body(&trim_dot(field.type_name()), value, context);
                }
                Type::Enum => {
                    let values = &self.enums[&trim_dot(field.type_name())];
                    let v = value.as_str().unwrap_or_default();
                    assert!(
                        values.iter().any(|n| n == v),
                        "{context}: {key}: {value} is not one of {values:?}"
                    );
                }
                _ => {}
            }
        }
    }

    /// Follows `keys` through what grpcurl prints for a `message`: its JSON names.
    fn check_printed_path(&self, message: &str, keys: &[String], context: &str) {
        let Some((key, rest)) = keys.split_first() else { return };
        let field = self.message(message).field.iter().find(|f| json_name(f) == *key).unwrap_or_else(|| {
            let printed: Vec<String> = self.message(message).field.iter().map(json_name).collect();
            panic!("{context}: grpcurl prints {message} with the keys {printed:?}, not {key:?}")
        });
        if !rest.is_empty() {
            self.check_printed_path(&trim_dot(field.type_name()), rest, context);
        }
    }
}

fn trim_dot(name: &str) -> String {
    name.trim_start_matches('.').to_owned()
}

/// The key a field has in the proto JSON mapping (what grpcurl prints).
fn json_name(f: &FieldDescriptorProto) -> String {
    if let Some(n) = &f.json_name {
        return n.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in f.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The port the README's local stack serves a service on.
fn port_of(service: &str) -> &'static str {
    match service {
        "sakuga.v1.AuthService" => "15051",
        "sakuga.v1.JobService" | "sakuga.v1.ProjectService" | "sakuga.v1.WebhookService" => "15052",
        "sakuga.v1.FileService" => "15053",
        other => panic!("the README's stack serves no {other}"),
    }
}

/// A grpcurl call of the tour (through the `g`/`ga` aliases): `(-d body, positionals)`.
fn grpcurl_args(words: &[String]) -> (Option<String>, Vec<String>) {
    let (mut body, mut positional) = (None, Vec::new());
    let mut it = words.iter().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "-d" => body = it.next().cloned(),
            "-H" | "-cacert" | "-cert" | "-key" => {
                it.next();
            }
            flag if flag.starts_with('-') => {}
            _ => positional.push(w.clone()),
        }
    }
    (body, positional)
}

/// Checks one grpcurl call; returns the method's response type when it calls one.
fn check_grpcurl(api: &Api, words: &[String], stdin: Option<&[String]>) -> Option<String> {
    let context = words.join(" ");
    let (body, positional) = grpcurl_args(words);
    let [addr, verb, rest @ ..] = positional.as_slice() else { panic!("{context}: no address and method") };
    assert!(addr.starts_with("127.0.0.1:"), "{context}: address {addr}");
    match (verb.as_str(), rest) {
        // The standard health service is not in the API's descriptors.
        ("list" | "grpc.health.v1.Health/Check", []) => None,
        ("describe", [name]) => {
            assert!(api.messages.contains_key(name), "{context}: no message {name}");
            None
        }
        (method, []) => {
            let (request, response) =
                api.methods.get(method).unwrap_or_else(|| panic!("{context}: no method {method}"));
            let service = method.split('/').next().unwrap_or_default();
            assert_eq!(addr.rsplit(':').next(), Some(port_of(service)), "{context}: wrong port");
            let body = match body.as_deref() {
                Some("@") => {
                    printf_json(stdin.unwrap_or_else(|| panic!("{context}: -d @ with nothing piped in")))
                }
                Some(text) => text.to_owned(),
                None => "{}".to_owned(),
            };
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{context}: -d is not JSON: {e}"));
            api.check_body(request, &json, &context);
            Some(response.clone())
        }
        _ => panic!("{context}: not a grpcurl call the test knows"),
    }
}

/// What `printf FORMAT ARGS…` writes, with each `%s` filled with a placeholder.
fn printf_json(words: &[String]) -> String {
    assert_eq!(words.first().map(String::as_str), Some("printf"), "-d @ reads {words:?}");
    words.get(1).unwrap().replace("%s", "placeholder")
}

/// The `["a"]["b"]` keys a python one-liner reads from the JSON on stdin.
fn python_keys(script: &str) -> Vec<String> {
    let from = script.find("json.load(sys.stdin)").expect("the one-liner reads JSON from stdin");
    let mut keys = Vec::new();
    let mut rest = &script[from + "json.load(sys.stdin)".len()..];
    while let Some(r) = rest.strip_prefix("[\"") {
        let end = r.find("\"]").unwrap();
        keys.push(r[..end].to_owned());
        rest = &r[end + 2..];
    }
    keys
}

/// Checks one simple command of a block; `responses` remembers what each pipeline printed.
fn check_command(api: &Api, words: &[String], previous: Option<&[String]>, printed: &mut Option<String>) {
    let context = words.join(" ");
    match words[0].as_str() {
        "sakuga" => {
            if let Err(e) = Cli::try_parse_from(words) {
                panic!("README: `{context}` does not parse:\n{e}");
            }
        }
        "make" => {
            for target in &words[1..] {
                let rule = format!("\n{target}:");
                assert!(MAKEFILE.contains(&rule), "README: `{context}`: the Makefile has no target {target}");
            }
        }
        "g" | "ga" => *printed = check_grpcurl(api, words, previous),
        "python3" => {
            let message = printed.take().unwrap_or_else(|| panic!("`{context}` reads no grpcurl output"));
            let script = &words[words.iter().position(|w| w == "-c").unwrap() + 1];
            let keys = python_keys(script);
            assert!(!keys.is_empty(), "`{context}` reads no key");
            api.check_printed_path(&message, &keys, &context);
        }
        "export" | "alias" | "printf" | "cat" | "jq" | "curl" | "sha256sum" => {}
        other => panic!("README: `{context}`: the test does not know how to check {other:?}"),
    }
}

#[test]
fn every_readme_command_block_names_real_commands_methods_and_keys() {
    let api = Api::load();
    let blocks = sh_blocks(README);
    assert!(blocks.len() >= 3, "the README's sh blocks: {blocks:?}");
    let (mut sakuga, mut grpcurl, mut python) = (0, 0, 0);
    for block in &blocks {
        let mut printed = None;
        for (words, previous) in commands(block) {
            match words[0].as_str() {
                "sakuga" => sakuga += 1,
                "g" | "ga" => grpcurl += 1,
                "python3" => python += 1,
                _ => {}
            }
            check_command(&api, &words, previous.as_deref(), &mut printed);
        }
    }
    // The blocks were found and read, not skipped.
    assert!(
        sakuga >= 5 && grpcurl >= 7 && python >= 1,
        "sakuga {sakuga}, grpcurl {grpcurl}, python {python}"
    );
}

#[test]
fn the_check_catches_a_key_grpcurl_does_not_print() {
    let api = Api::load();
    let (ok, bad) =
        (["tokens".to_owned(), "accessToken".to_owned()], ["tokens".to_owned(), "access_token".to_owned()]);
    api.check_printed_path("sakuga.v1.LoginResponse", &ok, "accessToken");
    let refused =
        std::panic::catch_unwind(|| api.check_printed_path("sakuga.v1.LoginResponse", &bad, "access_token"));
    assert!(refused.is_err(), "grpcurl prints accessToken, never access_token");
}

#[test]
fn the_shell_reader_splits_like_sh() {
    let cmds = commands(
        "export T=$(printf '{\"a\":\"%s\"}' \"$(cat f)\" |\n  g -d @ h:1 s/M | python3 -c 'x')\nsakuga login < f  # c\nga -d '{\"b\":\n 1}' \\\n  h:2 s/N\n",
    );
    let words: Vec<Vec<&str>> = cmds.iter().map(|(w, _)| w.iter().map(String::as_str).collect()).collect();
    assert_eq!(
        words,
        [
            vec!["export", "T="],
            vec!["printf", "{\"a\":\"%s\"}", "$(cat f)"],
            vec!["g", "-d", "@", "h:1", "s/M"],
            vec!["python3", "-c", "x"],
            vec!["sakuga", "login"],
            vec!["ga", "-d", "{\"b\":\n 1}", "h:2", "s/N"],
        ]
    );
}
