from django.apps import AppConfig


class PoolAppConfig(AppConfig):
    name = "pool.contrib.django"
    label = "phoenix_pool"
    verbose_name = "Phoenix pool"

    def ready(self):
        from django.core import checks
        from django.core.signals import setting_changed

        from . import reset
        from .checks import check_pool_settings

        checks.register(check_pool_settings, "pool")

        def on_setting_changed(setting, **kwargs):
            if setting == "POOL":
                reset()
        setting_changed.connect(on_setting_changed, weak=False,
                                dispatch_uid="pool.contrib.django.reset")
