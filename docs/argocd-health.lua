-- Argo CD health check for KmsKeySelector, KmsProvider and ClusterKmsProvider
-- (kms.keysync.dev). It reads the same conditions kstatus reads; see docs/gitops.md.
local hs = { status = "Progressing", message = "Waiting for the operator to answer" }
if obj.status == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "The operator has not answered the latest spec yet"
  return hs
end
local ready, stalled, reconciling
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    elseif c.type == "Stalled" then
      stalled = c
    elseif c.type == "Reconciling" then
      reconciling = c
    end
  end
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = reconciling.message
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
  return hs
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
elseif ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = ready.message
else
  hs.message = ready.reason .. ": " .. ready.message
end
return hs
