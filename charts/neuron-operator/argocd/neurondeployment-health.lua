-- Argo CD health check for neuron.dev/NeuronDeployment (argocd-cm key
-- resource.customizations.health.neuron.dev_NeuronDeployment). Lua 5.1, as Argo CD's interpreter runs it.
--
-- Reads status.conditions (kstatus conventions) and trusts them only once the operator has observed the
-- current spec (observedGeneration >= metadata.generation, on the status and on each condition it uses):
--   Stalled=True                        -> Degraded    (model missing, no capacity, progress deadline exceeded, ...)
--   not observed yet / Reconciling=True -> Progressing (rollout or scaling in progress, model not ready)
--   Ready=True                          -> Healthy     (all replicas serve the current artifact)
--   Ready=False, reason Suspended       -> Suspended   (spec.suspend: scaled to zero on purpose)
--   anything else                       -> Progressing
-- Keep neuronmodel-health.lua in step; tests/packaging runs both on sample objects.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
for _, condition in ipairs(status.conditions) do
  if condition.type ~= nil then
    conditions[condition.type] = condition
  end
end

local function current(condition)
  return generation == nil or condition.observedGeneration == nil or condition.observedGeneration >= generation
end

local function describe(condition)
  local text = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" and current(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and not current(ready) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" and current(reconciling) then
  hs.message = describe(reconciling)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

if ready ~= nil then
  hs.message = describe(ready)
end
return hs
