// Package iamtest emulates the services of Huawei Cloud that hand out temporary credentials
// (IAM, the ECS metadata service and CCE pod identity), so that a client of the KMS emulator
// (package kmstest) can be tested with OIDC workload identity federation, a node agency or CCE
// pod identity instead of a stored AK/SK. New returns an IAM; IAM.Trust names the
// kmstest.Emulators that accept what it issues: credentials for project P are registered, with
// their expiry, with every trusted Emulator whose ProjectID is P (Emulator.AddTemporaryToken and
// AddTemporaryAKSK), and with no other. IAM.Handler serves the routes below and, under
// /admin/iam/, an admin API (IAM.AdminHandler lists it); IAM.ServeHTTP serves the routes only,
// NewServer and NewTLSServer serve Handler on a random port, and hack/kms-emulator serves the
// routes on its KMS listener. Everything IAM issues lives for the credential lifetime
// (WithCredentialLifetime, SetCredentialLifetime; DefaultCredentialLifetime), by IAM's clock
// (WithClock), and expires_at is that instant in TimeFormat, rounded up to a
// whole second. Tokens, access keys, secret keys and security tokens are random, new for every
// answer, and appear in no error message; neither does an id_token.
//
// POST /v3.0/OS-AUTH/id-token/tokens with header X-Idp-Id and the body
//
//	{"auth":{"id_token":{"id":"<jwt>"},"scope":{"project":{"id":"<project>"}}}}
//
// exchanges an OIDC id_token for an IAM token. The identity provider (PutIdentityProvider)
// must exist; the id_token must be a compact JWS signed RS256 or ES256 by a key of its JWKS
// (the key with the header's kid when it has one, else the keys without kid); iss must be the
// provider's Issuer; aud, a string or an array, must hold one of its ClientIDs; exp must be
// after now; nbf and iat, when present, at most 60 s after now; sub must be present. A
// conversion rule (Allow) of the provider and sub must exist and list the project. The answer
// is 201 with the token in X-Subject-Token, an X-Request-Id, and
//
//	{"token":{"expires_at":"...","issued_at":"...","methods":["mapped"],
//	 "project":{"id":"<project>","name":"<project>"},
//	 "user":{"name":"<sub>","OS-FEDERATION":{"identity_provider":{"id":"<idp>"},"protocol":{"id":"oidc"}}}}}
//
// The token is valid as X-Auth-Token in the trusted Emulators of that project. Without a scope
// (as the SDK's federal accessor asks) the token is unscoped: no KMS accepts it and the answer
// has no project, but the AK/SK of securitytokens made from it are valid in every project of
// the rule. A domain scope is refused (400). Revoke, Allow and DeleteIdentityProvider do not
// touch tokens already issued.
//
// POST /v3.0/OS-CREDENTIAL/securitytokens with
//
//	{"auth":{"identity":{"methods":["token"],"token":{"id":"<IAM token>","duration_seconds":N}}}}
//
// (the token may come in X-Auth-Token instead of id) answers 201
// {"credential":{"access":"...","secret":"...","securitytoken":"...","expires_at":"..."}}: AK/SK
// valid for the token's project, living the shortest of duration_seconds (when positive), the
// credential lifetime and the token's remaining life.
//
// PUT /meta-data/latest/api/token with X-Metadata-Token-Ttl-Seconds from 1 to
// MaxMetadataTokenTTL answers 200 with a metadata token as plain text, valid that long.
// GET /openstack/latest/securitykey with that token in X-Metadata-Token answers 200
// {"credential":{...}} with AK/SK valid in the projects of the node agency (SetNodeAgency).
// These two routes answer errors as {"error":{"code":<status>,"message":"..."}}: 400 for a
// missing or out-of-range TTL; 401 for a missing, unknown or expired metadata token; and, when
// the node has no agency, exactly
//
//	401 {"error":{"code":401,"message":"Please configure Cloud Service Agency first"}}
//
// whose message (MetadataAgencyError) the SDK looks for; no other answer holds it.
// SetMetadataTokenless serves a host without session tokens: the PUT answers 405, and the GET
// needs no X-Metadata-Token.
//
// POST /v1/pod-identity/credentials (any body) with the association's token in Authorization
// (SetPodIdentity; compared after trimming white space) answers 200
// {"credentials":{...}} with AK/SK valid in the association's projects.
//
// The other routes answer errors as {"error_code":"IAM.XXXX","error_msg":"..."}, the message
// naming the cause. The checks run in this order, the first failure answering; the claims of
// a malformed id_token are reported where they are checked (aud with IAM.0107, exp with
// IAM.0104, a missing sub last):
//
//	     IAM.0<status>  an injected Fault (any route, before every check; e.g. IAM.0503)
//	405  IAM.0003  a method other than POST (metadata routes: PUT, GET), with Allow
//	400  IAM.0001  a malformed request: no X-Idp-Id; a body that is empty, not JSON, or longer
//	               than kmstest.MaxBodyBytes; no auth.id_token.id; a domain scope or a project scope
//	               without id; any scope after RefuseScopedTokens(true); securitytokens
//	               without methods ["token"] or without a token
//	404  IAM.0002  the X-Idp-Id identity provider does not exist
//	401  IAM.0101  a malformed id_token: not three base64url parts, header or payload not a
//	               JSON object, aud neither string nor array, exp/nbf/iat not numbers, no exp,
//	               no sub
//	401  IAM.0103  alg is not RS256 or ES256 (none, HS256, ...)
//	401  IAM.0102  the signature does not verify: no key for the alg (and kid), or a wrong or
//	               tampered signature
//	401  IAM.0106  iss is not the provider's issuer
//	401  IAM.0107  aud holds none of the provider's client IDs
//	401  IAM.0104  the id_token has expired (exp <= now)
//	401  IAM.0105  nbf or iat is more than 60 s in the future
//	403  IAM.0201  no conversion rule for the provider and sub
//	403  IAM.0202  the rule does not list the scope's project
//	401  IAM.0301  securitytokens: an unknown IAM token
//	401  IAM.0302  securitytokens: an expired IAM token
//	401  IAM.0401  pod identity: no or a wrong Authorization token (or no association set)
//	403  IAM.0402  pod identity: the right token, but the association has no projects
//	404  IAM.0004  a path IAM does not serve (not counted)
//
// The Code constants name these codes. InjectFault queues a Fault for a route (RouteIDToken,
// RouteSecurityTokens, RouteMetadata for both metadata routes, RouteMetadataToken or
// RouteSecurityKey for one of them, RoutePodIdentity) that answers Count requests (0: until
// ClearFaults) with its Status.
// Stats counts successes per route, id-token refusals, every refusal and applied faults;
// WithLogger logs one line per request.
//
// IAM's admin API, under /admin/iam/, takes IdentityProvider as JSON with signing_key a string
// holding the JWKS document (a JWKS object is accepted too):
//
//	GET|PUT /admin/iam/identity-providers      DELETE /admin/iam/identity-providers/{id}
//	GET|PUT|DELETE /admin/iam/rules            {"idp","subject","projects"}
//	GET|PUT /admin/iam/node-agency             {"projects"}
//	PUT /admin/iam/pod-identity                {"token","projects"}
//	GET|PUT /admin/iam/lifetime                {"seconds"}
//	GET|POST|DELETE /admin/iam/faults          Fault or an array of them
//	GET /admin/iam/stats                       POST /admin/iam/reset-stats
package iamtest
