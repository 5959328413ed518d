-- Argo CD health check for both neuron.dev kinds, NeuronModel and NeuronDeployment (argocd-cm keys
-- resource.customizations.health.neuron.dev_<Kind>). Lua 5.1, as Argo CD's interpreter runs it. Both kinds
-- follow the same condition conventions; only a NeuronDeployment can be Suspended (spec.suspend).
--
-- Reads status.conditions (kstatus conventions) and trusts them only once the operator has observed the
-- current spec (observedGeneration >= metadata.generation, on the status and on each condition it uses):
--   Stalled=True                        -> Degraded    (compile failed, model missing, no capacity, deadline, ...)
--   not observed yet / Reconciling=True -> Progressing (compiling, rollout or scaling in progress, ...)
--   Ready=True                          -> Healthy     (artifact stored / all replicas serve the current one)
--   Ready=False, reason Suspended       -> Suspended   (spec.suspend: scaled to zero on purpose)
--   anything else                       -> Progressing
-- tests/packaging runs it on sample objects of both kinds.
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

if obj.kind == "NeuronDeployment" and ready ~= nil and ready.status == "False" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

if ready ~= nil then
  hs.message = describe(ready)
end
return hs
