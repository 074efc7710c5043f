"""Apache Kafka 4.x, KRaft mode, single node, from Maven Central jars and the machine's java.

First use copies ``kafka-pom.xml`` into ``$CONFLUX_CACHE/kafka-<version>/`` and resolves the
broker and its runtime dependencies there with ``mvn dependency:copy-dependencies``; later starts
reuse the jars. Storage is formatted on first start (a half-formatted data dir is wiped and
formatted again). Automatic topic creation is off: the platform creates its topics.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

from conflux.errors import StackError
from conflux.settings import KAFKA_VERSION, Settings
from conflux.stack.service import Service, run_checked


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """The broker's ``server.properties`` (pure: tested without starting anything)."""
    host, port, cport = settings.bind_host, settings.kafka_port, settings.kafka_controller_port
    return "\n".join([
        "# written by conflux stack; edits are overwritten on the next start",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers={host}:{cport}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        "auto.create.topics.enable=false",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
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


class Kafka(Service):
    name = "kafka"
    start_timeout = 90.0

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def data_dir(self) -> Path:
        return self.settings.kafka_dir / "data"

    def marker(self) -> str:
        return f"-Dconflux.home={self.settings.home} kafka.Kafka"

    def ensure_jars(self) -> Path:
        """Resolve the broker jars into the cache (first use only); returns the libs folder."""
        libs = self.settings.kafka_libs
        done = libs / ".complete"
        if done.exists():
            return libs
        if shutil.which("mvn") is None:
            raise StackError("kafka: `mvn` not found; install Maven (apt-get install maven) so the "
                             "broker jars can be fetched from Maven Central")
        work = libs.parent
        work.mkdir(parents=True, exist_ok=True)
        pom = resources.files("conflux.stack").joinpath("kafka-pom.xml").read_text()
        pom = re.sub(r"<kafka.version>[^<]+</kafka.version>",
                     f"<kafka.version>{KAFKA_VERSION}</kafka.version>", pom)
        (work / "pom.xml").write_text(pom)
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        print(f"kafka: fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {work} "
              "(first use only)...", file=sys.stderr, flush=True)
        run_checked(["mvn", "-B", "-q", "-f", str(work / "pom.xml"),
                     "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
                     "-DincludeScope=runtime"],
                    what="kafka: mvn dependency:copy-dependencies", log=work / "mvn.log",
                    timeout=900)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        done.write_text(KAFKA_VERSION + "\n")
        return libs

    def classpath(self) -> str:
        return ":".join(str(p) for p in sorted(self.settings.kafka_libs.glob("*.jar")))

    def _java(self, main: str, *args: str) -> list[str]:
        cfg = self.settings.kafka_dir
        return ["java", *heap_flags(self.settings.kafka_heap), "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={cfg / 'log4j2.yaml'}",
                f"-Dconflux.home={self.settings.home}",
                "-cp", self.classpath(), main, *args]

    def prepare(self) -> None:
        major = java_major()
        if major < 17:
            raise StackError(f"kafka: Kafka {KAFKA_VERSION} needs java 17+, found java {major}")
        self.ensure_jars()
        cfg = self.settings.kafka_dir
        cfg.mkdir(parents=True, exist_ok=True)
        props = cfg / "server.properties"
        props.write_text(render_server_properties(self.settings, self.data_dir))
        (cfg / "log4j2.yaml").write_text(render_log4j2(self.log))
        if not (self.data_dir / "meta.properties").exists():
            # never formatted, or a format that died half-way: start from an empty dir
            shutil.rmtree(self.data_dir, ignore_errors=True)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            # "--cluster-id=ID": a base64 id may start with "-", which argparse would take for
            # an option (seen in CI: 1 start in 64 failed to format)
            run_checked(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                   "-c", str(props), "--standalone"),
                        what="kafka: format storage", log=self.log, timeout=120)

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.settings.kafka_dir / "server.properties"))

    def healthy(self) -> bool:
        from conflux.stack.procs import port_open

        if not port_open(self.settings.bind_host, self.port):
            return False
        # the port opens before the broker has joined its own quorum; ask for metadata
        from resources.kafka import broker_ready

        return broker_ready(self.settings.kafka_bootstrap)

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
