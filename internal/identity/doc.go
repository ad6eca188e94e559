// Package identity obtains temporary Huawei Cloud credentials without a long-lived key in the
// cluster, in the three ways the official Go SDK supports:
//
//   - workload identity: a Kubernetes service account token, minted through the TokenRequest
//     API, is exchanged at IAM (POST /v3.0/OS-AUTH/id-token/tokens with X-Idp-Id) for an IAM
//     token scoped to the project, which buys temporary AK/SK
//     (POST /v3.0/OS-CREDENTIAL/securitytokens);
//   - node agency: the ECS metadata service gives the node's agency credentials
//     (PUT /meta-data/latest/api/token, then GET /openstack/latest/securitykey);
//   - pod identity: CCE's pod identity endpoint gives the credentials of the agency bound to the
//     operator's own service account (POST to HC_CONTAINER_CREDENTIALS_FULL_URI with the token
//     of HC_CONTAINER_AUTHORIZATION_TOKEN_FILE).
//
// Every way ends in temporary AK/SK with a security token, which sign each KMS request: the
// bearer IAM token never leaves this package. A Broker caches the credentials of each identity,
// shares them between every caller of that identity, runs one refresh at a time per identity,
// and refreshes a quarter of the credentials' lifetime before they expire (at most the SDK's
// 40 minutes before), so that short-lived credentials are not fetched again on every call. A
// refresh that fails while the credentials in hand have half that margin left keeps them in use.
package identity
