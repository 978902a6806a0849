-- Argo CD health check for every Warren kind (warren.dev/*): Broker, Exchange, Queue, Binding,
-- Policy. It reads the same conditions as kstatus (Flux, kubectl wait): Stalled means someone
-- must act (Degraded), Reconciling means Warren is still working on it (Progressing), Ready=True
-- for the current generation means done (Healthy). See charts/warren/README.md to install it.
local hs = { status = "Progressing", message = "Waiting for Warren to reconcile" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for Warren to reconcile generation " .. tostring(generation)
  return hs
end
local ready, stalled, reconciling
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Stalled" then
    stalled = condition
  elseif condition.type == "Reconciling" then
    reconciling = condition
  end
end
local function say(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = say(stalled) }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = say(ready) }
end
if reconciling ~= nil and reconciling.status == "True" then
  return { status = "Progressing", message = say(reconciling) }
end
if ready ~= nil and ready.status == "False" then
  return { status = "Degraded", message = say(ready) }
end
return hs
