"""Apache Kafka 4.x, KRaft mode, from Maven Central jars and the machine's java: one node, or a
cluster of ``CONFLUX_KAFKA_BROKERS`` nodes on loopback.

Each node is both broker and controller. A single node formats its storage ``--standalone``
(a dynamic quorum of itself). A cluster has static voters (``controller.quorum.voters``, every
node), one cluster id shared by its nodes (``$CONFLUX_HOME/kafka/cluster.id``), its own ports
(:meth:`Settings.kafka_node_ports`), folder (``kafka/`` for node 1, ``kafka/node-<i>/`` for the
others), pid file and log; internal topics get replication factor ``min(3, nodes)`` and, from 3
nodes on, ``min.insync.replicas=2`` (the broker default for topics too): with ``acks=all`` a
record is acknowledged once two replicas have it, and one node may stop without losing any.
A storage formatted for another number of nodes is refused (``conflux stack reset --yes``).

First use copies ``kafka-pom.xml`` into ``$CONFLUX_CACHE/kafka-<version>/`` and resolves the
broker and its runtime dependencies there with ``mvn dependency:copy-dependencies``; later starts
reuse the jars. Storage is formatted on first start (a half-formatted data dir is wiped and
formatted again). Automatic topic creation is off: the platform creates its topics.

Security (``CONFLUX_KAFKA_SECURITY``): ``plaintext`` (default), ``sasl_plaintext`` or
``sasl_ssl``. Secured, the client listener takes SASL/SCRAM (SHA-256 and SHA-512) — over TLS with
``sasl_ssl``, from a local CA (``conflux/stack/tls.py``) — and the controller listener takes
SASL_PLAINTEXT (PLAIN: KRaft controllers take no SCRAM) on loopback. ACLs are on (KRaft's
``StandardAuthorizer``, no access where no ACL is found) with two principals
(``conflux/stack/acls.py``): the admin (``CONFLUX_KAFKA_ADMIN_USERNAME`` /
``CONFLUX_KAFKA_ADMIN_PASSWORD``), the only super user and the only user of the controller
listener (the broker registers and fetches metadata through it as the admin, authorized before
any ACL is loaded), and the platform (``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD``), with
the ACLs the stack gives it.

- the admin's credential is written into the metadata log when the storage is formatted
  (``kafka-storage format --add-scram``): KRaft needs it before the broker can authenticate its
  own inter-broker listener, and no unauthenticated listener exists to add it later. Conflux
  passes the *salted* form (salt, iterations, PBKDF2 output), never the password, in a java
  ``@argfile`` (mode 0600, deleted right after), so it is in no command line or log; the
  metadata log keeps only SCRAM's stored and server keys. The platform's credential is
  written by the admin at every start (``AlterUserScramCredentials``, salted too): changing
  ``KAFKA_SASL_PASSWORD`` takes effect at the next ``conflux stack up``;
- the broker's own JAAS login reads the admin password from its environment through Kafka's
  ``EnvVarConfigProvider`` (``${env:CONFLUX_KAFKA_ADMIN_PASSWORD}``; provider restricted to that
  variable): ``server.properties`` holds no secret. The broker names its providers in its own
  configuration, so the ``org.apache.kafka.automatic.config.providers`` allowlist (which limits
  providers instantiated *automatically*, from client configs) does not apply; checked on Kafka
  4.1.1 by resolving the file with that property set to ``none``.

The admin user is fixed when the storage is formatted (another one needs ``conflux stack reset``);
a start whose admin credentials the broker refuses fails within seconds with
``[STACK_SERVICE_FAILED]`` saying so (not after the 90 s start timeout).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from importlib import resources
from pathlib import Path

from conflux.core.errors import ConfigError, KafkaAuthenticationError, StackError
from conflux.core.settings import KAFKA_SECURITY_MODES, KAFKA_VERSION, Settings
from conflux.stack.service import Service, run_checked

SCRAM_MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
SCRAM_ITERATIONS = 8192
ENV_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
TOOLS_JAR = "kafka-tools-{version}.jar"  # Kafka's command-line tools, fetched with the broker
CONSUMER_GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_ADMIN_USER = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")  # also a JAAS option name (user_<admin>)
TOOLS_LOG4J = """Configuration:
  Appenders:
    Console: {name: err, target: SYSTEM_ERR, PatternLayout: {pattern: "%p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: err}]}
"""
_SCRAM_USER = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def security_properties(settings: Settings, listener: str) -> list[str]:
    """The secured client listener's lines of ``server.properties`` (none for plaintext): SCRAM
    for clients and for the broker's own inter-broker login as the admin principal, whose
    password comes from the environment through Kafka's ``EnvVarConfigProvider``; ACLs on, the
    admin and the controller listener's principal the only super users; TLS from the local CA's
    PEM files."""
    if settings.kafka_security == "plaintext":
        return []
    name = listener.lower()
    admin = admin_username(settings)
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{admin}" password="${{env:{ADMIN_PASSWORD_ENV}}}";')
    lines = [
        # secrets are resolved from the broker's environment, never written here
        "config.providers=env",
        f"config.providers.env.class={ENV_PROVIDER}",
        f"config.providers.env.param.allowlist.pattern=^{ADMIN_PASSWORD_ENV}$",
        f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        *(f"listener.name.{name}.{m.lower()}.sasl.jaas.config={jaas}" for m in SCRAM_MECHANISMS),
        # the controller listener: SASL/PLAIN (KRaft has no SCRAM there), the admin its only
        # user (server side: user_<admin>; the broker's own login: username/password)
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{admin}" password="${{env:{ADMIN_PASSWORD_ENV}}}" '
        f'user_{admin}="${{env:{ADMIN_PASSWORD_ENV}}}";',
        f"authorizer.class.name={AUTHORIZER}",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{admin}",
    ]
    if settings.kafka_security == "sasl_ssl":
        tls = settings.kafka_tls_dir
        lines += [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={tls / 'server.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls / 'ca.pem'}",
            "ssl.client.auth=none",
            "ssl.endpoint.identification.algorithm=https",
        ]
    return lines


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, ``min.insync.replicas``) of the platform's topics on a cluster of
    ``brokers`` nodes: 3 and 2 from 3 nodes on, so one node may be down while producers with
    ``acks=all`` go on."""
    factor = min(3, brokers)
    return factor, 2 if factor >= 3 else 1


def render_server_properties(settings: Settings, data_dir: Path, node: int = 1) -> str:
    """The ``server.properties`` of local node ``node`` (pure: tested without starting
    anything). It never holds a secret: a secured listener's credentials are ``${env:...}``
    references."""
    host = settings.bind_host
    port, cport = settings.kafka_node_ports(node)
    listener = KAFKA_SECURITY_MODES[settings.kafka_security]
    controller = "PLAINTEXT" if settings.kafka_security == "plaintext" else "SASL_PLAINTEXT"
    factor, min_isr = replication(settings.kafka_brokers)
    if settings.kafka_brokers == 1:  # a dynamic quorum of itself (formatted --standalone)
        quorum = f"controller.quorum.bootstrap.servers={host}:{cport}"
    else:  # static voters: every node, formatted with the shared cluster id
        quorum = "controller.quorum.voters=" + ",".join(
            f"{i}@{host}:{settings.kafka_node_ports(i)[1]}" for i in settings.kafka_nodes)
    return "\n".join([
        "# written by conflux stack; edits are overwritten on the next start",
        "process.roles=broker,controller",
        f"node.id={node}",
        quorum,
        f"listeners={listener}://{host}:{port},CONTROLLER://{host}:{cport}",
        f"advertised.listeners={listener}://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={listener}",
        f"listener.security.protocol.map=CONTROLLER:{controller},{listener}:{listener}",
        *security_properties(settings, listener),
        f"log.dirs={data_dir}",
        "auto.create.topics.enable=false",
        "num.partitions=1",
        f"default.replication.factor={factor}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={factor}",
        "offsets.topic.num.partitions=4",
        f"transaction.state.log.replication.factor={factor}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={factor}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=168",
        # accept messages up to 8 MiB so the platform, not the broker, judges oversize records
        "message.max.bytes=8388608",
        "replica.fetch.max.bytes=8388608",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ])


def render_log4j2(log_file: Path) -> str:
    """Broker logging: one file, INFO, no console noise."""
    return (
        "Configuration:\n"
        "  Appenders:\n"
        "    File:\n"
        "      name: file\n"
        f"      fileName: \"{log_file}\"\n"
        "      PatternLayout: {pattern: \"[%d] %p %m (%c)%n\"}\n"
        "  Loggers:\n"
        "    Logger:\n"
        "      - {name: kafka.request.logger, level: WARN}\n"
        "      - {name: org.apache.kafka.controller, level: INFO}\n"
        "    Root: {level: INFO, AppenderRef: [{ref: file}]}\n"
    )


def scram_credential(mechanism: str, user: str, password: str, *,
                     salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """``kafka-storage format --add-scram``'s value in its salted form (RFC 5802
    SaltedPassword = PBKDF2-HMAC(password, salt, iterations)): the password itself is not in
    it."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac(SCRAM_MECHANISMS[mechanism], password.encode(), salt, iterations)
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return (f'{mechanism}=[name={user},iterations={iterations},salt="{b64(salt)}",'
            f'saltedpassword="{b64(salted)}"]')


def scram_user_from_env(env: dict[str, str] | None = None) -> tuple[str, str]:
    """The platform's SCRAM user and password (``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``),
    which a secured local broker's admin provisions at every start.

    Raises:
        ConfigError: either is missing, the name is not ``[A-Za-z0-9._-]``, or the password holds
            a character the JAAS option it feeds cannot carry (``"``, ``\\``, a line break).
    """
    env = os.environ if env is None else env
    user, password = env.get("KAFKA_SASL_USERNAME") or "", env.get("KAFKA_SASL_PASSWORD") or ""
    missing = [n for n, v in (("KAFKA_SASL_USERNAME", user), ("KAFKA_SASL_PASSWORD", password))
               if not v]
    if missing:
        raise ConfigError(f"kafka: CONFLUX_KAFKA_SECURITY={env.get('CONFLUX_KAFKA_SECURITY')} "
                          f"needs {' and '.join(missing)} in the environment (the platform's SCRAM "
                          "user, which the clients use)")
    if not _SCRAM_USER.match(user):
        raise ConfigError(f"kafka: KAFKA_SASL_USERNAME={user!r} must be 1-128 characters of "
                          "A-Z a-z 0-9 . _ -")
    if any(c in password for c in '"\\\r\n'):
        raise ConfigError("kafka: KAFKA_SASL_PASSWORD must not contain a double quote, a "
                          "backslash or a line break (it is a JAAS option value)")
    return user, password


ADMIN_USERNAME_ENV = "CONFLUX_KAFKA_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "CONFLUX_KAFKA_ADMIN_PASSWORD"


def admin_username(settings: Settings) -> str:
    """The secured broker's admin user (``CONFLUX_KAFKA_ADMIN_USERNAME``), validated."""
    user = settings.kafka_admin_username
    if not _ADMIN_USER.match(user):
        raise ConfigError(f"kafka: {ADMIN_USERNAME_ENV}={user!r} must be a letter then up to 127 "
                          "characters of A-Z a-z 0-9 . _ -")
    return user


def admin_from_env(settings: Settings, env: dict[str, str] | None = None) -> tuple[str, str]:
    """The secured broker's admin user and password (``CONFLUX_KAFKA_ADMIN_PASSWORD``).

    Raises:
        ConfigError: no password, a bad name, a password a JAAS option cannot carry, or the
            platform's user (``KAFKA_SASL_USERNAME``) being the admin (it would be a super user).
    """
    env = os.environ if env is None else env
    user, password = admin_username(settings), env.get(ADMIN_PASSWORD_ENV) or ""
    if not password:
        raise ConfigError(f"kafka: CONFLUX_KAFKA_SECURITY={settings.kafka_security} needs "
                          f"{ADMIN_PASSWORD_ENV} in the environment (the password of the admin "
                          f"principal {user!r}, which the stack alone uses)")
    if any(c in password for c in '"\\\r\n'):
        raise ConfigError(f"kafka: {ADMIN_PASSWORD_ENV} must not contain a double quote, a "
                          "backslash or a line break (it is a JAAS option value)")
    if (env.get("KAFKA_SASL_USERNAME") or "") == user:
        raise ConfigError(f"kafka: KAFKA_SASL_USERNAME must not be the admin user {user!r} "
                          f"({ADMIN_USERNAME_ENV}): the platform's principal gets only its ACLs")
    return user, password


def client_properties(settings: Settings) -> str:
    """A Kafka tool's ``--command-config`` as the platform principal (pure): its credentials are
    ``${env:KAFKA_SASL_USERNAME}`` / ``${env:KAFKA_SASL_PASSWORD}`` references, resolved from the
    tool's environment, so the file holds no secret."""
    lines = [f"security.protocol={settings.kafka_protocol}"]
    if settings.kafka_protocol.startswith("SASL_"):
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                  if settings.kafka_sasl_mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        lines += ["config.providers=env", f"config.providers.env.class={ENV_PROVIDER}",
                  "config.providers.env.param.allowlist.pattern=^KAFKA_SASL_(USERNAME|PASSWORD)$",
                  f"sasl.mechanism={settings.kafka_sasl_mechanism}",
                  f'sasl.jaas.config={module} required username="${{env:KAFKA_SASL_USERNAME}}" '
                  'password="${env:KAFKA_SASL_PASSWORD}";']
    if settings.kafka_protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={settings.kafka_ssl_cafile}"]
    return "\n".join(lines) + "\n"


def java_argfile(args: list[str]) -> str:
    """A java launcher ``@argfile`` holding ``args``, one per line, single-quoted."""
    for arg in args:
        if "'" in arg or "\n" in arg or "\\" in arg:
            raise ConfigError(f"kafka: cannot pass {arg.split('=')[0]!r} in a java argument file")
    return "".join(f"'{arg}'\n" for arg in args)


def heap_flags(heap: str) -> list[str]:
    """``-Xmx`` as configured and ``-Xms`` half of it (1g default suits a 2-core / 24 GiB box)."""
    amount, unit = int(heap[:-1]), heap[-1].lower()
    megabytes = amount * (1024 if unit == "g" else 1)
    return [f"-Xmx{megabytes}m", f"-Xms{max(megabytes // 2, 64)}m"]


def java_major(java: str = "java") -> int:
    """Major version of ``java`` (raises StackError when missing)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise StackError("kafka: `java` not found; install a JDK 17+ (e.g. apt-get install "
                         "openjdk-17-jre-headless)") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise StackError(f"kafka: cannot read the java version from: {out.stderr.strip()}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def node_name(node: int) -> str:
    """The service name of local Kafka node ``node``: ``kafka`` for the first (as for a single
    broker), ``kafka-<i>`` for the others."""
    return "kafka" if node == 1 else f"kafka-{node}"


class Kafka(Service):
    """One local Kafka node (broker and controller); node 1 is the single broker's service."""

    start_timeout = 90.0

    def __init__(self, settings: Settings, node: int = 1):
        super().__init__(settings)
        if node not in settings.kafka_nodes:
            raise ConfigError(f"kafka: no node {node} with CONFLUX_KAFKA_BROKERS="
                              f"{settings.kafka_brokers}")
        self.node = node
        self.name = node_name(node)

    @property
    def port(self) -> int:
        return self.settings.kafka_node_ports(self.node)[0]

    @property
    def node_dir(self) -> Path:
        """This node's configuration, format record and ``data/``."""
        return self.settings.kafka_node_dir(self.node)

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    def marker(self) -> str:
        node = f" -Dconflux.kafka.node={self.node}" if self.node > 1 else ""
        return f"-Dconflux.home={self.settings.home}{node} kafka.Kafka"

    def describe(self) -> str:
        if self.settings.kafka_brokers == 1:
            return super().describe()
        return (f"{self.settings.bind_host}:{self.port} (node {self.node} of "
                f"{self.settings.kafka_brokers}, controller :"
                f"{self.settings.kafka_node_ports(self.node)[1]})")

    def ensure_jars(self) -> Path:
        """Resolve the broker and tools jars into the cache (first use only; a cache fetched
        before the tools were added gets the jars it lacks, none replaced); returns the libs
        folder."""
        libs = self.settings.kafka_libs
        done = libs / ".complete"
        if done.exists():
            if not (libs / TOOLS_JAR.format(version=KAFKA_VERSION)).exists():
                self._add_missing_jars(libs)
            return libs
        work = libs.parent
        work.mkdir(parents=True, exist_ok=True)
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self._fetch(work, staging, f"jars from Maven Central into {work} (first use only)")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        done.write_text(KAFKA_VERSION + "\n")
        return libs

    def _add_missing_jars(self, libs: Path) -> None:
        """Resolve the pom in a folder of this call's own and copy in the jars ``libs`` lacks
        (a running broker's jars are left alone; a concurrent call copies the same files)."""
        staging = Path(tempfile.mkdtemp(prefix="libs.add.", dir=libs.parent))
        try:
            self._fetch(staging, staging / "jars", f"tools jars into {libs} (once)")
            for jar in sorted((staging / "jars").glob("*.jar")):
                if not (libs / jar.name).exists():
                    shutil.copy2(jar, staging / f"{jar.name}.part")
                    os.replace(staging / f"{jar.name}.part", libs / jar.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _fetch(work: Path, out: Path, what: str) -> None:
        """``mvn dependency:copy-dependencies`` of ``kafka-pom.xml`` (written into ``work``)
        into ``out``."""
        if shutil.which("mvn") is None:
            raise StackError("kafka: `mvn` not found; install Maven (apt-get install maven) so the "
                             "broker jars can be fetched from Maven Central")
        pom = resources.files("conflux.stack").joinpath("kafka-pom.xml").read_text()
        pom = re.sub(r"<kafka.version>[^<]+</kafka.version>",
                     f"<kafka.version>{KAFKA_VERSION}</kafka.version>", pom)
        (work / "pom.xml").write_text(pom)
        print(f"kafka: fetching Apache Kafka {KAFKA_VERSION} {what}...", file=sys.stderr,
              flush=True)
        run_checked(["mvn", "-B", "-q", "-f", str(work / "pom.xml"),
                     "dependency:copy-dependencies", f"-DoutputDirectory={out}",
                     "-DincludeScope=runtime"],
                    what="kafka: mvn dependency:copy-dependencies", log=work / "mvn.log",
                    timeout=900)

    def tool(self, main: str, *args: str) -> list[str]:
        """The command running one of Kafka's own tools (``main``: its class, e.g.
        :data:`CONSUMER_GROUPS`) from the cached jars, logging warnings only; a ``--command-config``
        of :meth:`tool_config` may resolve ``${env:...}`` through the ``EnvVarConfigProvider``."""
        return ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={self._tools_log4j()}",
                f"-Dorg.apache.kafka.automatic.config.providers={ENV_PROVIDER}",
                "-cp", str(self.ensure_jars() / "*"), main, *args]

    def tool_config(self) -> Path:
        """``$CONFLUX_HOME/kafka/client.properties``: Kafka's tools as the platform principal
        (:func:`client_properties`; no secret in it), written afresh."""
        path = self.settings.kafka_dir / "client.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(client_properties(self.settings))
        return path

    def _tools_log4j(self) -> Path:
        path = self.settings.kafka_libs.parent / "tools-log4j2.yaml"
        if not path.exists():
            part = path.with_name(f"{path.name}.{os.getpid()}")
            part.write_text(TOOLS_LOG4J)
            os.replace(part, path)
        return path

    def classpath(self) -> str:
        return ":".join(str(p) for p in sorted(self.settings.kafka_libs.glob("*.jar")))

    def _java(self, main: str, *args: str) -> list[str]:
        """``java ... main args``; ``main`` may be an ``@argfile`` holding the main class and
        its arguments."""
        node = [f"-Dconflux.kafka.node={self.node}"] if self.node > 1 else []
        return ["java", *heap_flags(self.settings.kafka_heap), "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.node_dir / 'log4j2.yaml'}",
                f"-Dconflux.home={self.settings.home}", *node,
                "-cp", self.classpath(), main, *args]

    @property
    def secured(self) -> bool:
        return self.settings.kafka_security != "plaintext"

    @property
    def format_record(self) -> Path:
        """What the storage was formatted for (security mode, SCRAM user, nodes; no secret)."""
        return self.node_dir / "format.json"

    @property
    def cluster_id_file(self) -> Path:
        """The cluster id every node of a cluster is formatted with."""
        return self.settings.kafka_dir / "cluster.id"

    def cluster_id(self) -> str:
        """A new random id for a single node; a cluster's shared one (created on first use)."""
        fresh = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if self.settings.kafka_brokers == 1:
            return fresh
        try:
            return self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(fresh + "\n")
            return fresh

    def prepare(self) -> None:
        major = java_major()
        if major < 17:
            raise StackError(f"kafka: Kafka {KAFKA_VERSION} needs java 17+, found java {major}")
        user = admin_from_env(self.settings)[0] if self.secured else None
        # never formatted, or a format that died half-way (no meta.properties): format below
        formatted = (self.data_dir / "meta.properties").exists()
        if formatted:
            self.check_format(user)  # before any file is rewritten
        self.ensure_jars()
        cfg = self.node_dir
        cfg.mkdir(parents=True, exist_ok=True)
        if self.settings.kafka_security == "sasl_ssl":
            from conflux.stack.tls import ensure_server_tls

            ensure_server_tls(self.settings.kafka_tls_dir, self.settings.bind_host)
        props = cfg / "server.properties"
        props.write_text(render_server_properties(self.settings, self.data_dir, self.node))
        (cfg / "log4j2.yaml").write_text(render_log4j2(self.log))
        if self.secured:
            self.tool_config()  # Kafka's own tools as the platform principal (docs/security.md)
        if not formatted:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._format(props)
            record = {"security": self.settings.kafka_security, "admin_user": user}
            if self.settings.kafka_brokers > 1:
                record["brokers"] = self.settings.kafka_brokers
            self.format_record.write_text(json.dumps(record) + "\n")

    def check_format(self, user: str | None) -> None:
        """Refuse a formatted storage that does not fit the settings: formatted for another
        number of nodes (a KRaft quorum's voters are fixed then), or, secured, for another
        admin user (or before the broker had one).

        Raises:
            StackError: naming the data dir, what it was formatted for and the way out.
        """
        try:
            before = json.loads(self.format_record.read_text())
        except (OSError, ValueError):
            before = {"security": "plaintext"}
        if before.get("brokers", 1) != self.settings.kafka_brokers:
            raise StackError(
                f"{self.name}: the storage in {self.data_dir} was formatted for "
                f"{before.get('brokers', 1)} Kafka node(s), not CONFLUX_KAFKA_BROKERS="
                f"{self.settings.kafka_brokers}: a KRaft quorum's voters are fixed when it is "
                "formatted. Set it back, or wipe the brokers' data (`conflux stack reset --yes`)")
        if self.secured and before.get("admin_user") != user:
            was = before.get("admin_user")
            raise StackError(
                f"kafka: the broker's storage in {self.data_dir} was formatted "
                f"{'for admin user ' + repr(was) if was else 'without an admin user (before ACLs)'}"
                f", not for {ADMIN_USERNAME_ENV}={user!r}: the admin's SCRAM credentials are "
                "written when the storage is formatted. Use that user, or wipe the broker's data "
                "(`conflux stack reset --yes`)")

    def _format(self, props: Path) -> None:
        # "--cluster-id=ID": a base64 id may start with "-", which argparse would take for an
        # option (seen in CI: 1 start in 64 failed to format)
        args = ["kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id()}",
                "-c", str(props)]
        if self.settings.kafka_brokers == 1:
            args.append("--standalone")  # a cluster's voters are static, in server.properties
        if not self.secured:
            run_checked(self._java(*args), what="kafka: format storage", log=self.log, timeout=120)
            return
        # the SCRAM credentials (salted: no password) go in a java @argfile only we can read,
        # so they are in no command line (/proc/<pid>/cmdline is world-readable) and no log
        user, password = admin_from_env(self.settings)
        for mechanism in SCRAM_MECHANISMS:
            args += ["--add-scram", scram_credential(mechanism, user, password)]
        argfile = self.node_dir / "format.args"
        argfile.unlink(missing_ok=True)
        fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(java_argfile(args))
            run_checked(self._java(f"@{argfile}"),
                        what="kafka: format storage", log=self.log, timeout=120)
        finally:
            argfile.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.node_dir / "server.properties"))

    def env(self) -> dict[str, str] | None:
        if not self.secured:
            return None
        admin_from_env(self.settings)  # the broker's JAAS login reads it through ${env:...}
        env = dict(os.environ)
        env.pop("KAFKA_SASL_PASSWORD", None)  # the platform's: the broker has no use for it
        return env

    def health_login(self) -> tuple[str, str, str]:
        """(user, password, their variables) the health check of a secured node logs in with:
        the admin (the broker's own login) when ``CONFLUX_KAFKA_ADMIN_PASSWORD`` is set, else
        the platform user (``conflux stack status`` from a shell of the platform's; asking
        for the cluster's brokers needs no ACL)."""
        if os.environ.get(ADMIN_PASSWORD_ENV):
            return (*admin_from_env(self.settings), f"{ADMIN_USERNAME_ENV} / {ADMIN_PASSWORD_ENV}")
        return (*scram_user_from_env(), "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD")

    def client(self):
        """A client of this node as the health check uses it: the stack's own security
        mode, :meth:`health_login`'s user, the local CA."""
        from conflux.io.kafka import KafkaResource

        address = f"{self.settings.bind_host}:{self.port}"
        if not self.secured:
            return KafkaResource(bootstrap_servers=address)
        user, password, _ = self.health_login()
        ca = (str(self.settings.kafka_tls_dir / "ca.pem")
              if self.settings.kafka_security == "sasl_ssl" else None)
        return KafkaResource(bootstrap_servers=address,
                             security_protocol=KAFKA_SECURITY_MODES[self.settings.kafka_security],
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=user,
                             sasl_password=password, ssl_cafile=ca)

    def auth_refusals_since(self, mark: int) -> list[str]:
        """The broker's "Failed authentication ... invalid credentials" log lines written after
        byte ``mark`` of its log: the broker's own word that a client's password was wrong
        (kafka-python often sees only the connection closing)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(mark)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines()
                if "Failed authentication" in line and "invalid credentials" in line]

    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def healthy(self) -> bool:
        from conflux.stack.procs import port_open

        if not port_open(self.settings.bind_host, self.port):
            return False
        # the port opens before the broker has joined its own quorum; ask for metadata
        mark = self._log_size()
        try:
            # a cluster's node counts once the cluster lists it as a live (unfenced) broker
            ready = self.client().ready(
                node_id=self.node if self.settings.kafka_brokers > 1 else None)
        except KafkaAuthenticationError as exc:
            refused = str(exc)
        else:
            if ready or not self.secured or not (lines := self.auth_refusals_since(mark)):
                return ready
            found = re.search(r"\((Authentication failed[^)]*)\)", lines[-1])
            refused = found.group(1) if found else lines[-1]
        raise StackError(
            f"kafka: the broker refused {self.health_login()[2]} ({refused}); the admin's SCRAM "
            "credentials were set when its storage was formatted, the platform's at the last "
            "`conflux stack up`: use those, or wipe the broker's data (`conflux stack reset --yes`)")

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
