# Assumes the project already has its App Engine app (one per project, never deleted):
# Cloud Tasks creates App Engine tasks for it.
module "cloudtasks_deferred" {
  source = "../../modules/cloudtasks_deferred"

  project_id                    = var.project_id
  location                      = var.location
  queues                        = var.queues
  runtime_service_account_email = coalesce(var.runtime_service_account_email, "${var.project_id}@appspot.gserviceaccount.com")
  # App Engine tasks are authenticated by the headers App Engine sets: no OIDC invoker,
  # so no service account and no actAs grant.
  create_invoker_service_account = false
}
