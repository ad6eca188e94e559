// Package kmstest is an in-memory emulator of Huawei Cloud KMS ListKmsByTags
// (POST /v1.0/{project_id}/kms/resource_instances/action), the one KMS API kms-key-sync calls.
//
// Use it to test an application that reads the ConfigMaps kms-key-sync writes: start an
// emulator holding the keys the test needs, point a KmsKeySelector's spec.provider.endpoint at
// it, and change keys, credentials or faults while the test runs. The operator's own tests, its
// demo and the hack/kms-emulator command use it the same way. It implements the API contract
// the operator's client is written against (internal/kms/doc.go, docs/kms-api.md); this comment
// states every rule the emulator applies.
//
// # Starting it
//
// NewServer starts a plain HTTP emulator on 127.0.0.1 at a random port, like
// net/http/httptest; NewTLSServer starts an HTTPS one with a self-signed certificate for
// 127.0.0.1, which Server.CertificatePEM, Server.CertPool and Server.Client help to trust.
// Server.URL is the endpoint; call Server.Close when done. New returns a bare Emulator to serve
// yourself: Emulator.ServeHTTP serves the KMS API only, Emulator.Handler adds the admin API.
// Options (WithKeys, WithToken, WithAKSK, WithProjectID, ...) configure all three.
//
// The hack/kms-emulator command serves an Emulator on a fixed address, for manual use:
//
//	go run ./hack/kms-emulator --token demo --keys hack/kms-emulator/sample-keys.json
//
// An operator sends credentials to a plain http:// endpoint only when it runs with
// --allow-insecure-endpoints; for an https:// endpoint of NewTLSServer it must trust
// Server.CertificatePEM, which --kms-ca-file does.
//
// An Emulator serves one project, DefaultProjectID unless WithProjectID says otherwise, and
// holds all of its state: keys, credentials, faults, response shape and counters. Every method is
// safe for concurrent use, also while requests are served; the next request sees a change.
//
// # Keys
//
// The emulator stores Key values by id. WithKeys, PutKeys and ReplaceKeys store keys; Key, Keys
// and KeyCount read them; UpdateKey, SetKeyState and SetKeyTags change one; DeleteKey and
// DeleteAllKeys remove them. Keys are copied in and out, and stored as given: FillDefaults
// completes a key that sets only some fields, and GenerateKeys makes many keys at once. A seed
// file is a JSON array of KeyRecord; ReadKeys, ReadKeysFile, LoadKeys and LoadKeysFile read one
// and WriteKeys writes one. Keys of every State are listed; the state is only reported.
//
// # Credentials
//
// A request authenticates in one of two ways. With an IAM token in X-Auth-Token, accepted when
// registered with WithToken or AddToken; ExpireToken marks it expired, RemoveToken forgets it.
// Or with an AK/SK signature: an Authorization: SDK-HMAC-SHA256 header, with X-Sdk-Date signed
// and within MaxClockSkew of the emulator's clock (see WithClock), for an access key registered
// with WithAKSK or AddAKSK. An access key registered with a security token is temporary: its
// requests must send that token, signed, in X-Security-Token. The emulator verifies a signature
// by rebuilding the request (method, path, query, signed headers and body) and signing it again
// with the vendor's signer (github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer), so
// a client that signs correctly passes. A request with both is checked by its token.
// AddTemporaryToken and AddTemporaryAKSK register credentials that expire: from their expiry
// on, by the emulator's clock, requests with them get 403 KMS.0303 (for AK/SK once the
// signature verifies). Credentials that expired more than a day before are forgotten when new
// temporary ones are added. An iamtest.IAM registers what it issues this way (see "Keyless
// credentials").
// WithAuthDisabled and SetAuthDisabled accept every request. Secrets appear in no log line, no
// RequestRecord and no error message.
//
// # Requests and filter semantics
//
// The body is a JSON object such as
//
//	{"action":"filter","limit":"10","offset":"0",
//	 "tags":[{"key":"env","values":["prod","staging"]},{"key":"team","values":[]}],
//	 "matches":[{"key":"resource_name","value":"payments"}]}
//
// action is ActionFilter (a page of keys) or ActionCount (only the number of matching keys).
// limit and offset are JSON strings of decimal digits: limit from 1 to MaxPageSize, DefaultLimit
// when absent; offset from 0, 0 when absent. A count request ignores both. tags, matches and
// sequence (SequenceLength bytes, otherwise unused) are optional; Content-Type is not checked.
//
// Different tag keys are ANDed, the values of one key are ORed, and an empty values list means
// "carries the key, with any value": the example above selects the keys tagged env=prod or
// env=staging that also carry a team tag. A match with key resource_name is a case-sensitive
// substring of the key alias; several matches are ANDed. Without tags and matches every key
// matches. Matching keys are listed sorted by id: offset is the index of the first key of the
// page, limit the page size, and total_count the number of all matching keys.
//
// # Answers and response shapes
//
// A filter answer is {"resources":[...],"total_count":N} and a count answer {"total_count":N},
// with total_count a JSON number, both 200 with Content-Type application/json. A resource is
//
//	{"resource_id":"<id>","resource_detail":<detail>,"resource_name":"<alias>",
//	 "tags":[{"key":"env","value":"prod"}]}
//
// with tags sorted by key, [] when none. The Shape, chosen by WithShape or SetShape, says how
// resource_detail is encoded. ShapeSchema, the default, follows the API's schema: an object
// whose fields are all strings, such as "key_state":"2", "default_key_flag":"0",
// "key_rotation_enabled":"false", and dates in epoch seconds. ShapeExample follows the vendor's
// response example: an array of one object, with key_state, default_key_flag and a numeric
// key_type as JSON numbers, key_rotation_enabled a boolean, and dates in epoch milliseconds as
// numbers. In both an absent date is "". The Key documentation maps its fields to the names.
//
// # Errors
//
// An error answer carries {"error":{"error_code":"KMS.XXXX","error_msg":"..."}} (ErrorBody),
// with a message that names the offending field. A request is checked in this order, and the
// first failure answers:
//
//	404 KMS.0201  the path is not /v1.0/{project_id}/kms/resource_instances/action
//	405 KMS.0201  the method is not POST (with Allow: POST)
//	              (injected gateway faults act here)
//	400 KMS.0203  the body is longer than MaxBodyBytes
//	403 KMS.0301  no credentials, an empty X-Auth-Token, or a temporary access key without
//	              X-Security-Token
//	403 KMS.0302  an unknown token; any AK/SK failure: a malformed Authorization header, an
//	              unknown access key, a wrong signature, X-Sdk-Date unsigned, unparsable or
//	              more than MaxClockSkew away, a wrong or unexpected X-Security-Token
//	403 KMS.0303  an expired token (ExpireToken), or temporary credentials past their expiry
//	              (AddTemporaryToken, AddTemporaryAKSK)
//	403 KMS.0305  the path's project_id is not the emulator's project
//	400 KMS.0202  the body is not a JSON object: a syntax error, trailing data, an array, ...
//	400 KMS.0204  a missing field: an empty body, no action, a tag without key, a match
//	              without key or value
//	400 KMS.0206  an invalid field value: an unknown action; limit or offset not a JSON string,
//	              not digits, or out of range; a field of the wrong JSON type; a tag key empty,
//	              longer than MaxTagKeyLength or containing ASCII 0-31 or ForbiddenTagChars;
//	              the same for a value, which may be empty and has MaxTagValueLength; a
//	              repeated tag key, or a repeated value within one key; more than MaxTags tag
//	              keys; a match key other than MatchResourceName; a match value empty or
//	              longer than MaxMatchValueLength; a sequence that is not SequenceLength bytes
//
// A field of the wrong JSON type is reported first, then the fields are checked in the order
// action, limit, offset, tags, matches, sequence.
// The API documents KMS.0206 as "invalid sequence" and has no generic code for an invalid value,
// so the emulator uses it for every one. The Code constants name these codes. The emulator
// itself never answers 429 or 5xx: those come from injected faults only.
//
// # Faults
//
// InjectFault queues a Fault, Faults lists the pending ones with what is left of their Skip and
// Times, and ClearFaults drops them all. A fault acts on the requests it matches (its Action and
// its kind's own condition): it lets the first Skip of them pass, then acts on Times of them, or
// on every one when Times is 0. Faults apply in two phases, each taking the first matching fault
// of the queue. Gateway faults act before authentication, as the API gateway in front of KMS
// would: FaultThrottle (429 with the gateway's JSON body and an optional Retry-After),
// FaultServerError (5xx with an HTML body), FaultDrop (the connection closes without an
// answer), FaultKMSError (any KMS error) and FaultLatency (a Delay, then the normal answer).
// Response faults change a successful answer: FaultMalformedJSON, FaultTruncatedJSON,
// FaultTotalDrift, FaultDuplicate and FaultEmptyPage. Every fault may add a Delay. The admin
// API takes faults as JSON, such as {"kind":"throttle","times":2,"delay":"100ms"}.
//
// # Counters
//
// Stats counts the requests to the KMS API: in total, by action, by HTTP status, and how often
// faults acted. Requests returns the latest requests, up to MaxRecordedRequests, as
// RequestRecords: what each asked for, how it authenticated and what it was answered.
// ResetStats zeroes both. A request is counted before its answer is written, so a client that
// holds an answer finds it counted. WithLogger logs one line per request.
//
// # Admin API
//
// Emulator.Handler, and so every Server and hack/kms-emulator, also serves an unauthenticated
// JSON admin API under /admin/ for keys, faults, counters, the shape and tokens, for processes
// that cannot call the methods; AdminHandler lists its routes. It is meant for local use only.
//
// # Keyless credentials
//
// Package iamtest (pkg/kmstest/iamtest) emulates IAM, the ECS metadata service and CCE pod
// identity, which hand out temporary credentials; an iamtest.IAM that trusts an Emulator
// registers what it issues with AddTemporaryToken and AddTemporaryAKSK.
package kmstest
