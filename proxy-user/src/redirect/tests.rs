use super::*;
use crate::config;

fn plan(frontends: &str) -> Plan {
    let text = format!("[global]\noutgoing_mark = 0x10\n{frontends}");
    Plan::new(&config::parse(&text, "t.toml").unwrap())
}

fn rule(words: &str) -> Vec<String> {
    // Rules are compared word by word; the comment is the only argument with spaces.
    let mut out = Vec::new();
    let mut rest = words;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let (word, tail) = quoted.split_once('"').unwrap();
            out.push(word.to_owned());
            rest = tail.trim_start();
        } else {
            let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(word.to_owned());
            rest = tail.trim_start();
        }
    }
    out
}

#[test]
fn a_gateway_and_local_frontend_gets_both_chains_per_family() {
    let plan = plan(
        "[[frontend]]\nname = \"egress\"\nlisten = \"[::]:15001\"\nmode = \"transparent\"\n\
         intercept = { ports = [443, 80], from = [\"10.0.0.0/8\", \"fd00::/8\"], local = true }\n",
    );
    assert!(plan.local);
    let redirect = |source: &str| {
        rule(&format!(
            "-p tcp {source}-m multiport --dports 443,80 -m comment --comment \"agent-proxy \
             frontend egress\" -j REDIRECT --to-ports 15001"
        ))
    };
    assert_eq!(plan.v4.prerouting, vec![redirect("-s 10.0.0.0/8 ")]);
    assert_eq!(plan.v6.prerouting, vec![redirect("-s fd00::/8 ")]);
    assert_eq!(
        plan.v4.output,
        vec![
            rule("-m mark --mark 0x10 -j RETURN"),
            rule("-d 127.0.0.0/8 -j RETURN"),
            redirect("")
        ]
    );
    assert_eq!(
        plan.v6.output,
        vec![
            rule("-m mark --mark 0x10 -j RETURN"),
            rule("-d ::1/128 -j RETURN"),
            redirect("")
        ]
    );
}

#[test]
fn families_follow_the_listen_address_and_ports_are_chunked() {
    let ports = (1000..1020)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let plan = plan(&format!(
        "[[frontend]]\nname = \"v4\"\nlisten = \"0.0.0.0:15001\"\nmode = \"transparent\"\n\
         intercept = {{ ports = [{ports}], from = [\"10.0.0.0/8\", \"fd00::/8\"] }}\n\
         [[frontend]]\nname = \"plain\"\nlisten = \"0.0.0.0:15002\"\nmode = \"transparent\"\n"
    ));
    assert!(!plan.local);
    assert!(plan.v6.prerouting.is_empty() && plan.v6.output.is_empty());
    assert!(plan.v4.output.is_empty());
    // 20 ports: a rule of 15 and one of 5, both from the IPv4 network only.
    assert_eq!(plan.v4.prerouting.len(), 2);
    assert!(
        plan.v4.prerouting[0].contains(
            &(1000..1015)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    assert!(plan.v4.prerouting[1].contains(&"1015,1016,1017,1018,1019".to_owned()));
}

#[test]
fn no_transparent_frontend_no_rules() {
    let plan = plan("[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"connect\"\n");
    assert!(plan.is_empty());
    assert!(!plan.local);
}
