#!/usr/bin/env bash
# Java 17 + Apache Kafka jars from Maven Central (deploy/kafka/pom.xml) into .cache/kafka/libs.
# deploy/servers.py runs a single-node KRaft broker from this classpath.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

POM="$REPO_ROOT/deploy/kafka/pom.xml"
LIBS="$CACHE_DIR/kafka/libs"
STAMP="$LIBS/.pom.sha256"

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

step "kafka: check Java >= 17"
if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null; then
  info "present: java $(java_major)"
else
  step "kafka: install Java 17 (apt openjdk-17-jre-headless)"
  apt_install openjdk-17-jre-headless
  [ "$(java_major)" -ge 17 ] || fail "java >= 17 still missing after install"
fi

step "kafka: check the jar cache $LIBS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(file_sha "$POM")" ] \
  && ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
  info "present: $(ls "$LIBS" | grep -c '\.jar$') jars ($(basename "$(ls "$LIBS"/kafka_2.13-*.jar)"))"
  exit 0
fi

step "kafka: check Maven"
if ! command -v mvn >/dev/null 2>&1; then
  step "kafka: install Maven (apt maven)"
  apt_install maven
fi

step "kafka: download Kafka jars from Maven Central (mvn dependency:copy-dependencies)"
rm -rf "$LIBS.tmp"
mkdir -p "$LIBS.tmp"
MVN_LOG="$CACHE_DIR/kafka/mvn.log"
mvn -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$LIBS.tmp" >"$MVN_LOG" 2>&1 \
  || { tail -n 30 "$MVN_LOG" >&2; fail "mvn dependency:copy-dependencies failed (is Maven Central reachable? log: $MVN_LOG)"; }
ls "$LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || fail "kafka_2.13 jar missing after mvn"
rm -rf "$LIBS"
mv "$LIBS.tmp" "$LIBS"

step "kafka: check the classpath loads kafka.tools.StorageTool"
java -Dlog4j.configuration="file:$REPO_ROOT/deploy/kafka/log4j.properties" -cp "$LIBS/*" \
  kafka.tools.StorageTool random-uuid >/dev/null \
  || fail "java could not run kafka.tools.StorageTool from $LIBS"
file_sha "$POM" >"$STAMP"
info "installed: $(ls "$LIBS" | grep -c '\.jar$') jars in $LIBS"
