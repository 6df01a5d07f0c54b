# The values combinations of charts/kmosix that render differently, shared by
# chart_test.sh (lint, render) and dry_run.sh (server-side dry run).
#   combo_args NAME   prints the helm flags of combination NAME
# shellcheck shell=bash
COMBO_NAMES=(default crds-off crds-not-kept etcd-3 etcd-external certmanager certmanager-issuer
  certmanager-agent-secrets existing existing-agent-secrets agent-secrets servicemonitor tuned
  criu-install)
combo_args() {
  case $1 in
    default) ;;
    crds-off) echo "--set crds.install=false" ;;
    crds-not-kept) echo "--set crds.keep=false" ;;
    etcd-3) echo "--set etcd.embedded.replicas=3" ;;
    etcd-external) echo "--set etcd.mode=external --set etcd.external.endpoints={https://etcd-a.example:2379,https://etcd-b.example:2379} --set etcd.external.caSecret=etcd-ca" ;;
    certmanager) echo "--set certificates.source=certManager --set certificates.nodes={node1,node2}" ;;
    certmanager-issuer) echo "--set certificates.source=certManager --set certificates.certManager.issuerRef.name=corp-ca --set certificates.certManager.issuerRef.kind=ClusterIssuer --set certificates.nodes={node1,node2} --set etcd.auth.enabled=false" ;;
    certmanager-agent-secrets) echo "--set certificates.source=certManager --set certificates.agentIdentity=secret --set certificates.nodes={node1,node2}" ;;
    existing) echo "--set certificates.source=existingSecret --set certificates.existingSecret.ca=my-ca --set certificates.existingSecret.controller=my-controller-tls --set certificates.existingSecret.nodeIssuer=my-node-issuer --set certificates.existingSecret.etcdServer=my-etcd-tls --set certificates.existingSecret.etcdRoot=my-etcd-root --set tokens.existingSecret=my-tokens" ;;
    existing-agent-secrets) echo "--set certificates.source=existingSecret --set certificates.agentIdentity=secret --set certificates.existingSecret.ca=my-ca --set certificates.existingSecret.controller=my-controller-tls --set certificates.existingSecret.agents=my-agent-tls --set certificates.existingSecret.etcdServer=my-etcd-tls --set certificates.existingSecret.etcdRoot=my-etcd-root --set tokens.existingSecret=my-tokens" ;;
    agent-secrets) echo "--set certificates.agentIdentity=secret" ;;
    servicemonitor) echo "--set metrics.serviceMonitor.enabled=true" ;;
    tuned) echo "--set agent.tolerations[0].key=dedicated --set agent.tolerations[0].operator=Exists --set agent.priorityClassName=system-node-critical --set controller.replicas=3 --set agent.acceptTokens=true --set etcd.embedded.persistence.enabled=false --set controller.balancer.enabled=false" ;;
    criu-install) echo "--set agent.criu.install.enabled=true --set agent.criu.check=nsenter" ;;
    *) echo "combo_args: unknown combination $1" >&2; return 1 ;;
  esac
}
