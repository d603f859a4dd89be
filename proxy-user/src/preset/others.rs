//! The StackState preset (seed 001's HAProxy forwarder) and the DataKit preset (seed 004's
//! proxy on 9530).
use std::fmt::Write as _;

use super::{ALLOW_PRIVATE, Preset, Receiver, header};

/// StackState: agents post to a tcp frontend on 3834, as to seed 001's HAProxy `forwarder`;
/// the backend is the receiver, with verified TLS when it speaks HTTPS.
pub(super) fn stackstate(out: &mut String, receiver: &Receiver) {
    let preset = Preset::StackState {
        receiver: receiver.clone(),
    };
    header(out, &preset, "StackState Agents through a forwarder port");
    let server = format!("{}:{}", receiver.host, receiver.port);
    let path = if receiver.path.is_empty() {
        "/<RECEIVER_PATH>"
    } else {
        &receiver.path
    };
    if receiver.placeholder {
        let _ = write!(
            out,
            "\n\
             # REPLACE the receiver: {server} below is a placeholder that resolves nowhere\n\
             # (the proxy starts, /readyz answers 503 until it is replaced). Print the config\n\
             # for your receiver with `agent-proxy init --preset stackstate --receiver\n\
             # https://HOST[:PORT]/receiver/stsAgent`.\n"
        );
    }
    let tls_note = if receiver.tls {
        "The proxy originates TLS to the receiver and verifies its certificate (system CA\n\
         # bundle, the name {host}), so agents speak plain HTTP to it and, unlike seed 001's\n\
         # HAProxy passthrough, need no `skip_ssl_validation` / `--sslcheck=0`."
    } else {
        "The receiver speaks plain HTTP ({host}), so the bytes go through untouched; keep\n\
         # the agent-proxy and proxy-receiver hops on a trusted network."
    }
    .replace("{host}", &receiver.host);
    let _ = write!(
        out,
        "\n\
         # HAProxy's `frontend forwarder` on *:3834 and `backend stackstate`, as in StackState's\n\
         # proxy guide. {tls_note}\n\
         # The receiver's name follows its DNS TTLs (`dns` below): no cron reload every 10 minutes.\n\
         # HAProxy's stats page on 3835 is the admin endpoint's /stats and /metrics here.\n\
         #\n\
         # On each agent (<PROXY_HOST> is this host):\n\
         #   StackState Agent v2 and later, /etc/stackstate-agent/stackstate.yaml:\n\
         #     sts_url: http://<PROXY_HOST>:3834{path}\n\
         #   the agent of seed 001, /etc/sts-agent/stackstate.conf:\n\
         #     dd_url: http://<PROXY_HOST>:3834\n\
         \n\
         [[frontend]]\n\
         name = \"stackstate\"\n\
         listen = \"0.0.0.0:3834\"\n\
         mode = \"tcp\"\n\
         backend = \"stackstate\"\n\
         {ALLOW_PRIVATE}\n\
         \n\
         [[backend]]\n\
         name = \"stackstate\"\n\
         servers = [\"{server}\"]\n"
    );
    if receiver.tls {
        out.push_str("tls = {}                           # verified, SNI = the server's host\n");
    }
    out.push_str(
        "health_check = { interval = \"10s\", timeout = \"3s\" }   # HAProxy's `check`\n\
         dns = { min_ttl = \"5s\", max_ttl = \"300s\" }\n",
    );
}

/// DataKit: a connect frontend on 9530, the port of DataKit's own proxy input; the Dataway is
/// the one destination.
pub(super) fn datakit(out: &mut String) {
    header(
        out,
        &Preset::DataKit,
        "DataKit through a CONNECT proxy on 9530",
    );
    out.push_str(
        "\n\
         # In the place of a DataKit with the proxy input (`[[inputs.proxy]]`, port 9530): the\n\
         # internal DataKits point their Dataway proxy here and open CONNECT tunnels to the\n\
         # Dataway; their TLS goes end to end, the kernel carries the tunnel. Do not run\n\
         # DataKit's own proxy input on this host: it takes the same port.\n\
         #\n\
         # On each DataKit, in datakit.conf (or ENV_DATAWAY_HTTP_PROXY):\n\
         #\n\
         #   [dataway]\n\
         #     urls = [\"https://openway.guance.com?token=<TOKEN>\"]\n\
         #     http_proxy = \"http://<PROXY_HOST>:9530\"\n\
         #\n\
         # Keep the Dataway URL https:// so that the DataKit uses CONNECT. A Dataway on another\n\
         # host (another Guance site, your own Dataway) goes into allow_destinations as\n\
         # \"HOST:443\".\n\
         \n\
         [[frontend]]\n\
         name = \"datakit\"\n\
         listen = \"0.0.0.0:9530\"\n\
         mode = \"connect\"\n",
    );
    out.push_str(ALLOW_PRIVATE);
    out.push_str(
        "\n\
         # users = [{ name = \"datakit\", password = \"<PASSWORD>\" }]   # Basic auth; then http_proxy = \"http://datakit:<PASSWORD>@<PROXY_HOST>:9530\"\n\
         connect_timeout = \"5s\"\n\
         allow_destinations = [\"openway.guance.com:443\"]\n",
    );
}
